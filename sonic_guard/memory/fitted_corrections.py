"""Corrections the simulation cannot know, fitted from recorded runs: allocator overhead and speed.

Both start from documented defaults labelled "uncalibrated" and are refitted from history rows by least squares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CUDA_BLOCK_BYTES = 512  # the caching allocator rounds every block up to this (kept torch-free for a cache hit)

GIB = 1024**3
MIB = 1024**2
UNCALIBRATED = "uncalibrated"


def _fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares (intercept, slope), or None when x has no spread."""
    n = len(xs)
    if n < 2:
        return None
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    if var <= 0.0 or var < 1e-12 * max(1.0, mean_x**2):
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var
    return mean_y - slope * mean_x, slope


@dataclass(frozen=True)
class AllocatorCalibration:
    """device peak = max over stages of (weights + activations x (1 + fragmentation)) + fixed_bytes.

    fixed_bytes: cuBLAS/cuDNN workspaces and other device memory outside tensors that appears once the run starts
    (the CUDA context itself already left free memory when it was measured). fragmentation: what the allocator
    needs beyond the live activations (rounding, split blocks, segments it cannot reuse for a differently sized
    tensor). It applies to activations only: weights are allocated once, at load, and pack tightly.

    Measured on an H100 in an earlier session (torch 2.11; no longer in a results file: the hand-assembled
    bench/results/gpu_h100.json is in git history, and bench/bench_gpu.py measures it again): the least memory one
    UNet window needs exceeds its weights + simulated activations by 1-7 % of the activations under cudaMallocAsync
    (ComfyUI's default) or expandable segments, and by 25-30 % under PyTorch's native caching allocator.
    """

    fixed_bytes: int = 256 * MIB
    fragmentation: float = 0.10
    source: str = UNCALIBRATED

    def overhead(self, activation_bytes: int) -> int:
        return int(self.fixed_bytes + activation_bytes * self.fragmentation)

    @classmethod
    def fit(cls, samples: Sequence[tuple[int, int]]) -> AllocatorCalibration:
        """Fit from (simulated activation bytes, measured bytes beyond the weights) pairs; falls back to defaults
        where it must."""
        default = cls()
        usable = [(p, m) for p, m in samples if p > 0 and m > 0]
        if not usable:
            return default
        line = _fit_line([p for p, _ in usable], [m for _, m in usable])
        if line is not None and line[0] >= 0 and line[1] >= 1.0:
            return cls(int(line[0]), line[1] - 1.0, f"history ({len(usable)} runs, fitted)")
        # One size only (or an implausible fit): keep the default fixed part and take the fragmentation that
        # covers every recorded run.
        worst = max((m - default.fixed_bytes) / p - 1.0 for p, m in usable)
        return cls(default.fixed_bytes, max(0.0, worst), f"history ({len(usable)} runs, proportional only)")


NATIVE_ALLOCATOR_CALIBRATION = AllocatorCalibration(
    256 * MIB, 0.35, "uncalibrated (PyTorch's native caching allocator: 25-30 % measured on an H100)")


def default_calibration(device_type: str, allocator: str = "native") -> AllocatorCalibration:
    """Starting calibration per device type (and CUDA allocator kind: see `free_memory.cuda_allocator_kind`)."""
    if device_type == "cpu":
        return AllocatorCalibration(0, 0.0, "cpu: host allocator, no overhead modelled")
    if device_type == "mps":
        return AllocatorCalibration(256 * MIB, 0.15, "uncalibrated (mps: allocator behaviour not measured)")
    if allocator == "native":
        return NATIVE_ALLOCATOR_CALIBRATION
    return AllocatorCalibration(source=f"uncalibrated ({allocator}: 1-7 % measured on an H100)")


CFG_BRANCHES = 3  # unconditional, audio-only and full conditioning, as the sampler runs them


def cfg_call_batches(cfg_batch: int) -> tuple[int, ...]:
    """The batch of each UNet call in one window: 3 branches grouped by `cfg_batch` (3 -> (3,); 2 -> (2, 1);
    1 -> (1, 1, 1)). Every window runs all three branches, whatever the grouping."""
    if not 1 <= cfg_batch <= CFG_BRANCHES:
        raise ValueError(f"cfg_batch must be 1, 2 or 3, got {cfg_batch}")
    full, rest = divmod(CFG_BRANCHES, cfg_batch)
    return (cfg_batch,) * full + ((rest,) if rest else ())


@dataclass(frozen=True)
class TimeModel:
    """Seconds of one UNet call = per_call_s + per_pixel_frame_s x (width x height x frames x batch).

    The default coefficient is roughly what published reports imply (about 1.2 s per 512^2 window of 75 frames);
    it is labelled uncalibrated until history refits it on this machine.
    """

    per_call_s: float = 0.05
    per_pixel_frame_s: float = 6.0e-8
    decode_per_pixel_frame_s: float = 4.0e-9
    source: str = UNCALIBRATED

    def unet_call_seconds(self, width: int, height: int, frames: int, batch: int) -> float:
        return self.per_call_s + self.per_pixel_frame_s * width * height * frames * batch

    def run_seconds(self, width: int, height: int, steps: int, num_frames: int, cfg_batch: int,
                    window: int = 25) -> float:
        """Predicted denoising + decode seconds for a run (other stages are small and fixed)."""
        windows = math.ceil(num_frames / window)
        per_window = sum(self.unet_call_seconds(width, height, window, batch) for batch in cfg_call_batches(cfg_batch))
        decode = self.decode_per_pixel_frame_s * width * height * num_frames
        return steps * windows * per_window + decode

    @classmethod
    def fit(cls, samples: Sequence[tuple[int, float]]) -> TimeModel:
        """Fit from (pixel-frames of one call, seconds of one call) pairs."""
        default = cls()
        usable = [(x, y) for x, y in samples if x > 0 and y > 0]
        if not usable:
            return default
        line = _fit_line([x for x, _ in usable], [y for _, y in usable])
        if line is not None and line[1] > 0:
            return cls(max(0.0, line[0]), line[1], default.decode_per_pixel_frame_s,
                       f"history ({len(usable)} runs, fitted)")
        slope = sum(y for _, y in usable) / sum(x for x, _ in usable)
        return cls(0.0, slope, default.decode_per_pixel_frame_s, f"history ({len(usable)} runs, proportional)")
