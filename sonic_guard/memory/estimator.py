"""Predict the peak device memory of a planned run from the engine's own modules on the meta device.

Peak = max over stages of (weights resident during the stage + that stage's activation peak) + allocator overhead.
Activation peaks are simulated once per shape and kept in the estimator's `StageCache`, so the planner's ladder
and repeated questions cost nothing after the first time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace

import torch

from . import stages
from .calibration import AllocatorCalibration
from .model_specs import MetaModels, ModelConfigs
from .plan import ExecutionPlan, MemoryEstimate, StageEstimate
from .tracker import CUDA_BLOCK_BYTES

logger = logging.getLogger(__name__)

# Which models each stage needs on the device, in the order a run reaches the stages.
STAGE_MODELS: dict[str, tuple[str, ...]] = {
    "face_detect": ("face_detector",),
    "clip_encode": ("clip",),
    "audio_features": ("whisper",),
    "vae_encode": ("vae",),
    "unet_window": ("unet", "audio_adapters"),
    "vae_decode": ("vae",),
}
ALL_MODELS: tuple[str, ...] = ("unet", "audio_adapters", "vae", "clip", "whisper", "face_detector")


@dataclass
class StageCache:
    """Activation peaks by shape key; one per estimator (never global)."""

    entries: dict[Hashable, int] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], int]) -> tuple[int, bool]:
        if key in self.entries:
            self.hits += 1
            return self.entries[key], True
        self.misses += 1
        value = compute()
        self.entries[key] = value
        return value, False


class MemoryEstimator:
    """Simulates each stage of a plan once per shape; `estimate(plan)` gives the whole run's prediction."""

    def __init__(self, configs: ModelConfigs | None = None, calibration: AllocatorCalibration | None = None,
                 *, block: int = CUDA_BLOCK_BYTES) -> None:
        self.configs = configs or ModelConfigs.full_size()
        self.calibration = calibration or AllocatorCalibration()
        self.block = block
        self.models = MetaModels(self.configs)
        self.cache = StageCache()
        self._fingerprint = self.configs.fingerprint()

    def _model_dtype(self, name: str, plan: ExecutionPlan) -> torch.dtype:
        return stages.WHISPER_DTYPE if name == "whisper" else plan.torch_dtype

    def _model_bytes(self, name: str, plan: ExecutionPlan) -> int:
        if name == "unet" and plan.unet_weight_offload:
            return self.models.streamed_unet_bytes(plan.torch_dtype, self.block)
        return self.models.weight_bytes(name, self._model_dtype(name, plan), self.block)

    def resident_models(self, stage: str, plan: ExecutionPlan) -> tuple[str, ...]:
        """Models on the device during `stage`: all of them (official behaviour) or only the stage's own."""
        return STAGE_MODELS[stage] if plan.offload_idle_models else ALL_MODELS

    def _activation(self, stage: str, plan: ExecutionPlan) -> tuple[int, bool]:
        p, fp, block = plan, self._fingerprint, self.block
        if stage == "face_detect":
            return 0, False  # not simulated: the detector runs once on one image; its weights are counted
        if stage == "unet_window":
            key: Hashable = (stage, fp, block, p.width, p.height, p.cfg_batch, p.ff_chunk, p.attention, p.dtype)
            unet = self.models.get("unet", p.torch_dtype)
            return self.cache.get_or_compute(key, lambda: stages.simulate_unet_window(unet, p, self.configs, block))
        if stage == "vae_decode":
            key = (stage, fp, block, p.width, p.height, p.decode_chunk, p.attention, p.dtype)
            vae = self.models.get("vae", p.torch_dtype)
            return self.cache.get_or_compute(key, lambda: stages.simulate_vae_decode(vae, p, block))
        if stage == "vae_encode":
            key = (stage, fp, block, p.width, p.height, p.attention, p.dtype)
            vae = self.models.get("vae", p.torch_dtype)
            return self.cache.get_or_compute(key, lambda: stages.simulate_vae_encode(vae, p, block))
        if stage == "clip_encode":
            key = (stage, fp, block, p.attention, p.dtype)
            clip = self.models.get("clip", p.torch_dtype)
            return self.cache.get_or_compute(key, lambda: stages.simulate_clip(clip, p, block))
        if stage == "audio_features":
            key = (stage, fp, block, p.attention)
            whisper = self.models.get("whisper", stages.WHISPER_DTYPE)
            return self.cache.get_or_compute(key, lambda: stages.simulate_whisper(whisper, p, self.configs, block))
        raise KeyError(f"unknown stage {stage!r}")

    def estimate(self, plan: ExecutionPlan, free_bytes: int | None = None) -> MemoryEstimate:
        """Per-stage and overall peak of `plan`. Duration does not enter: whole-clip tensors live on the host."""
        started = time.perf_counter()
        hits = 0
        results: dict[str, StageEstimate] = {}
        for stage in STAGE_MODELS:
            activation, cached = self._activation(stage, plan)
            hits += int(cached)
            resident = self.resident_models(stage, plan)
            weights = sum(self._model_bytes(name, plan) for name in resident)
            results[stage] = StageEstimate(stage, weights, activation, resident)
        raw = max(s.peak_bytes for s in results.values())
        estimate = MemoryEstimate(
            stages=results, overhead_bytes=self.calibration.overhead(raw), calibration=self.calibration.source,
            simulated_seconds=time.perf_counter() - started, cache_hits=hits, free_bytes=free_bytes,
        )
        if plan.interpolate:
            estimate.notes.append("interpolation stage not simulated (no RIFE module in the engine yet)")
        logger.debug("estimate %sx%s cfg=%s: %.2f GiB (%s)", plan.width, plan.height, plan.cfg_batch,
                     estimate.peak_bytes / 2**30, estimate.dominant_stage)
        return estimate

    def with_calibration(self, calibration: AllocatorCalibration) -> MemoryEstimator:
        """Same cache and models, new allocator calibration (e.g. after loading history)."""
        self.calibration = replace(calibration)
        return self


def estimate_peak(plan: ExecutionPlan, model_configs: ModelConfigs | None = None, free_bytes: int | None = None,
                  *, estimator: MemoryEstimator | None = None) -> MemoryEstimate:
    """One-shot prediction; pass a long-lived `estimator` to reuse its per-shape cache."""
    estimator = estimator or MemoryEstimator(model_configs)
    return estimator.estimate(plan, free_bytes)
