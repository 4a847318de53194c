"""Check the simulation against the real CPU allocator: a real forward of a small SonicUNet vs its meta twin.

The CPU measurement is allocator-level: torch.profiler's memory events (every allocation and free), summed in
time order. Inputs are created before both measurements, so only the forward's own allocations count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..models.configs import ModelConfigs
from ..models.unet import build_sonic_unet
from .attention_model import AttentionModel
from .tracker import LiveBytesTracker


@dataclass(frozen=True)
class ValidationResult:
    attention: str
    shape: tuple[int, int, int]  # batch, frames, pixel size
    simulated_bytes: int
    measured_bytes: int

    @property
    def relative_error(self) -> float:
        return abs(self.simulated_bytes - self.measured_bytes) / self.measured_bytes


def profiled_peak_bytes(run: Callable[[], object]) -> int:
    """Peak live CPU allocation bytes while `run` executes, from the profiler's allocator events."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def unet_inputs(device: str, batch: int, frames: int, size: int, configs: ModelConfigs) -> tuple:
    """Random SonicUNet inputs per the engine contract (sample, timestep, clip, audio, time ids, face mask)."""
    generator = torch.Generator().manual_seed(0)
    h, dim = size // 8, int(configs.unet["cross_attention_dim"])
    tensors = (
        torch.randn(batch, frames, 8, h, h, generator=generator),
        torch.randn(batch, 1, dim, generator=generator),
        torch.randn(batch, frames, configs.audio_tokens, dim, generator=generator),
        torch.randn(batch, 3, generator=generator),
        torch.rand(1, 1, size, size, generator=generator),
    )
    sample, clip, audio, ids, mask = (t.to(device) for t in tensors)
    return sample, 0.5, clip, audio, ids, mask


def validate_unet_on_cpu(attention: str, batch: int = 2, frames: int = 4, size: int = 256,
                         configs: ModelConfigs | None = None) -> ValidationResult:
    """Simulated vs measured activation peak of one real CPU forward (fp32, no allocator rounding on CPU).

    CPU SDPA's default kernel is fused flash attention (O(tokens)); "math" forces the materialised path.
    """
    configs = configs or ModelConfigs.tiny()
    torch.manual_seed(0)
    real = build_sonic_unet(configs.unet).eval()
    meta = build_sonic_unet(configs.unet, device="meta").to("meta").eval()
    cpu_inputs = unet_inputs("cpu", batch, frames, size, configs)
    backend = sdpa_kernel(SDPBackend.MATH) if attention == "math" else contextlib.nullcontext()

    def run_real() -> None:
        with torch.no_grad(), backend:
            real(*cpu_inputs)

    measured = profiled_peak_bytes(run_real)
    meta_inputs = unet_inputs("meta", batch, frames, size, configs)
    with torch.no_grad(), AttentionModel(attention), LiveBytesTracker(block=1) as tracker:
        meta(*meta_inputs)
    return ValidationResult(attention, (batch, frames, size), tracker.peak_bytes, measured)
