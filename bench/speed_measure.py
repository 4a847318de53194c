"""What bench_speed measures on each side: UNet call times and FLOPs, the latents handed to the VAE decoder,
peak memory, and the GPU's dense fp16/bf16 peak that achieved TFLOPS are compared with."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) fp16/bf16 tensor-core peaks in TFLOPS, from the vendors' datasheets; the first name part
# found in torch.cuda.get_device_name() wins, so the more specific names come first.
DENSE_FP16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.1), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0),
    ("A10", 125.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0), ("V100", 125.0), ("T4", 65.0),
)


def dense_fp16_peak_tflops(device: torch.device) -> tuple[float | None, str | None]:
    """(peak, None) for a known GPU, else (None, why)."""
    if device.type != "cuda":
        return None, "no GPU: the CPU has no dense fp16 tensor-core peak to compare with"
    name = torch.cuda.get_device_name(device)
    for part, peak in DENSE_FP16_PEAK_TFLOPS:
        if part in name:
            return peak, None
    return None, f"GPU {name!r} is not in the bench's table of dense fp16/bf16 peaks (bench/speed_measure.py)"


# What torch dispatches scaled_dot_product_attention to: fused kernels (O(tokens) memory) and the math fallback.
FUSED_SDPA_OPS = ("aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_cudnn_attention",
                  "aten::_scaled_dot_product_fused_attention_overrideable")
MATH_SDPA_OPS = ("aten::_scaled_dot_product_attention_math",)
SOFTMAX_OPS = ("aten::softmax", "aten::_softmax")  # an attention written by hand (or the math path) shows these


def attention_kernels(call: Callable[[], None], device: torch.device) -> dict[str, Any]:
    """Run `call` under torch.profiler and count the attention ops it dispatched: every SDPA call, which kernel
    each went to, and any softmax (attention outside SDPA). `all_fused`: every attention ran a fused kernel."""
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if device.type == "cuda" else [])]
    with profile(activities=activities) as prof:
        call()
        synchronize(device)
    counts = Counter(event.name for event in prof.events())
    sdpa = counts.get("aten::scaled_dot_product_attention", 0)
    kernels = {name: counts[name] for name in (*FUSED_SDPA_OPS, *MATH_SDPA_OPS) if counts.get(name)}
    fused = sum(counts.get(name, 0) for name in FUSED_SDPA_OPS)
    softmax = sum(counts.get(name, 0) for name in SOFTMAX_OPS)
    return {"sdpa_calls": sdpa, "fused_calls": fused, "softmax_calls": softmax, "kernels": kernels,
            "all_fused": sdpa > 0 and fused == sdpa and softmax == 0}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class UnetCalls:
    """Times every forward of a UNet (synchronised) and keeps the first call's inputs to count its FLOPs."""

    def __init__(self, unet: torch.nn.Module, device: torch.device) -> None:
        self.unet, self.device = unet, device
        self.seconds: list[float] = []
        self.batches: list[int] = []
        self.first_call: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._started = 0.0
        self._handles: list[Any] = []

    def __enter__(self) -> UnetCalls:
        self._handles = [self.unet.register_forward_pre_hook(self._before, with_kwargs=True),
                         self.unet.register_forward_hook(self._after)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _before(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.first_call is None:
            self.first_call = (args, kwargs)
        self.batches.append(int((args[0] if args else kwargs["sample"]).shape[0]))
        synchronize(self.device)
        self._started = time.perf_counter()

    def _after(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - self._started)

    def count_flops(self) -> int | None:
        """FLOPs of the first call, counted by torch.utils.flop_counter on the real inputs (one extra call)."""
        if self.first_call is None:
            return None
        args, kwargs = self.first_call
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            self.unet(*args, **kwargs)
        return int(counter.get_total_flops())

    def summary(self, windows: int) -> dict[str, Any]:
        """Seconds per window (one call of 3 CFG branches, or the 3 calls of one branch each)."""
        total = sum(self.seconds)
        per_window = total / windows if windows else None
        later = sorted(self.seconds[1:])
        return {"calls": len(self.seconds), "windows": windows, "branches_per_call": sorted(set(self.batches)),
                "unet_seconds_total": round(total, 4),
                "seconds_per_unet_window": round(per_window, 5) if per_window else None,
                "first_call_s": round(self.seconds[0], 5) if self.seconds else None,
                "median_call_after_first_s": round(later[len(later) // 2], 5) if later else None}


class DecodeInputs:
    """Records what a VAE's decode gets (the final latents / 0.18215, chunk by chunk): the output both pipelines
    are compared on."""

    def __init__(self, vae: torch.nn.Module) -> None:
        self.vae = vae
        self.chunks: list[torch.Tensor] = []

    def __enter__(self) -> DecodeInputs:
        original = self.vae.decode

        def decode(latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.chunks.append(latents.detach().to("cpu", torch.float32).clone())
            return original(latents, *args, **kwargs)

        self.vae.decode = decode  # an instance attribute: the class's method is untouched
        return self

    def __exit__(self, *exc: object) -> None:
        del self.vae.decode

    def latents(self) -> torch.Tensor:
        return torch.cat(self.chunks)


class PeakMemory:
    """Peak memory of one side: torch.cuda.max_memory_allocated on a GPU; on the CPU the process RSS sampled
    every 10 ms by psutil (peak, and its rise over the RSS when the side began)."""

    def __init__(self, device: torch.device, interval_s: float = 0.01) -> None:
        self.device, self.interval_s = device, interval_s
        self.process = psutil.Process()
        self.start_rss = self.peak_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            self._stop.wait(self.interval_s)

    @contextlib.contextmanager
    def measure(self) -> Iterator[PeakMemory]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start_rss = self.peak_rss = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, name="rss-peak", daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)

    def report(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            return {"source": "torch.cuda.max_memory_allocated",
                    "peak_bytes": int(torch.cuda.max_memory_allocated(self.device)),
                    "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(self.device))}
        return {"source": "process RSS (psutil, sampled every 10 ms)", "peak_bytes": int(self.peak_rss),
                "rise_bytes": int(self.peak_rss - self.start_rss)}


def difference(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, Any]:
    """Max abs and max relative (to the largest magnitude) difference of two outputs of the same shape."""
    if ours.shape != theirs.shape:
        return {"same_shape": False, "ours_shape": list(ours.shape), "official_shape": list(theirs.shape)}
    delta = (ours.double() - theirs.double()).abs().max().item()
    scale = max(ours.double().abs().max().item(), theirs.double().abs().max().item())
    return {"same_shape": True, "shape": list(ours.shape), "max_abs": delta,
            "max_rel": delta / scale if scale else 0.0, "scale": scale}
