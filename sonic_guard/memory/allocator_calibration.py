"""Calibrate the allocator overhead on a real CUDA device and store it in the run history.

One UNet window (random weights: memory does not depend on their values) runs at a few sizes with the
quality-neutral plan. What is recorded against the simulated tensor peak is the least memory the window needs:
the smallest per-process cap (`torch.cuda.set_per_process_memory_fraction`) under which it finishes, found by
bisection. The allocator's unconstrained reserved peak is not that figure: with room to spare the caching allocator
keeps freed blocks instead of reusing them (measured on an H100: 1.3-1.7x the tensor peak), and it gives them back
and retries before it reports an OOM. `RunHistory.calibration()` fits fixed bytes + fragmentation from the rows.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Callable, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..models.configs import ModelConfigs
from ..models.unet import build_sonic_unet
from .estimator import MemoryEstimator
from .fitted_corrections import MIB, AllocatorCalibration, cfg_call_batches
from .free_memory import cuda_allocator_kind, device_label, device_memory_cap, torch_free_memory
from .history import RunHistory
from .plan import ExecutionPlan
from .report import RunReport

logger = logging.getLogger(__name__)

_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "mem_efficient": SDPBackend.EFFICIENT_ATTENTION,
             "math": SDPBackend.MATH}


def calibrate_on_device(history: RunHistory, device: str = "cuda", *, sizes: Sequence[int] = (512, 768),
                        configs: ModelConfigs | None = None, attention: str = "flash",
                        resolution_bytes: int = 64 * MIB) -> AllocatorCalibration:
    """Measure UNet windows on `device` (CUDA only), store them in `history`, return the refitted calibration."""
    target = torch.device(device)
    if target.type != "cuda":
        raise ValueError(f"allocator calibration needs a CUDA device, got {target.type!r}")
    configs = configs or ModelConfigs.full_size()
    estimator = MemoryEstimator(configs, AllocatorCalibration(0, 0.0, "raw"))
    name = device_label(target)
    allocator = cuda_allocator_kind()
    for size in sizes:
        plan = ExecutionPlan(min_resolution=size, width=size, height=size, cfg_batch=1, ff_chunk=4,
                             attention=attention, offload_idle_models=True)
        stage = estimator.estimate(plan, exact=True).stages["unet_window"]
        unet_bytes = estimator.models.weight_bytes("unet", plan.torch_dtype, estimator.block)
        raw = unet_bytes + stage.activation_bytes  # the UNet alone is on the device here
        free_before = torch_free_memory(target).free_bytes
        needed = least_memory_needed(lambda plan=plan: run_window(plan, configs, target), target,
                                     low=int(raw * 0.8), high=int(raw * 2.0), resolution=resolution_bytes)
        logger.info("calibration %s %dpx (%s): simulated %d B, least memory needed %s B", name, size, allocator,
                    raw, needed)
        history.record(RunReport(
            plan=plan.to_dict(), predicted_peak_bytes=raw, raw_predicted_bytes=raw, raw_weight_bytes=unet_bytes,
            measured_peak_bytes=needed,
            free_before_bytes=free_before, levers_applied=list(plan.levers_applied),
            hardware={"device_name": name, "torch": torch.__version__, "allocator": allocator},
            outcome="calibration",
        ))
    return history.calibration(device=name)


def least_memory_needed(run: Callable[[], object], device: torch.device, *, low: int, high: int,
                        resolution: int = 64 * MIB) -> int | None:
    """Smallest per-process memory cap (bytes) under which `run` finishes, by bisection; None if `high` fails."""

    def finishes_under(cap: int) -> bool:
        gc.collect()
        torch.cuda.empty_cache()
        try:
            with device_memory_cap(device, cap):
                run()
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            gc.collect()
            torch.cuda.empty_cache()

    if not finishes_under(high):
        return None
    while high - low > resolution:
        middle = (low + high) // 2
        if finishes_under(middle):
            high = middle
        else:
            low = middle
    return high


def unet_on_device(configs: ModelConfigs, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Random UNet weights allocated directly in `dtype`: building in fp32 first would put a transient fp32 copy
    (twice the fp16 weights) into the measured peak."""
    unet = build_sonic_unet(configs.unet, device="meta", dtype=dtype).to_empty(device=device)
    with torch.no_grad():
        for tensor in [*unet.parameters(), *unet.buffers()]:
            if tensor.is_floating_point():
                tensor.normal_(0.0, 0.02)
    return unet


def run_window(plan: ExecutionPlan, configs: ModelConfigs, device: torch.device,
               unet: torch.nn.Module | None = None) -> None:
    """One sampler window of random inputs as the engine runs it (`cfg_call_batches`); builds a random
    UNet on `device` when none is given."""
    unet = unet if unet is not None else unet_on_device(configs, device, plan.torch_dtype)
    unet.set_feed_forward_chunking(plan.ff_chunk)
    h, w = plan.latent_size
    frames, dim, dtype = configs.window_frames, int(configs.unet["cross_attention_dim"]), plan.torch_dtype
    backend = sdpa_kernel(_BACKENDS[plan.attention]) if plan.attention in _BACKENDS else contextlib.nullcontext()
    with torch.no_grad(), backend:
        outputs = []
        for batch in cfg_call_batches(plan.cfg_batch):  # the CFG branches, as the engine runs them
            outputs.append(unet(
                torch.randn(batch, frames, 8, h, w, device=device, dtype=dtype), 0.5,
                torch.randn(batch, 1, dim, device=device, dtype=dtype),
                torch.randn(batch, frames, configs.audio_tokens, dim, device=device, dtype=dtype),
                torch.randn(batch, 3, device=device, dtype=dtype),
                torch.rand(1, 1, plan.height, plan.width, device=device, dtype=dtype),
            ))
        torch.cuda.synchronize(device)
    del outputs, unet
