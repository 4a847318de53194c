"""Predict the peak device memory of a planned run from the engine's own modules on the meta device.

Peak = max over stages of (weights resident during the stage + that stage's activation peak) + allocator overhead.
Activation peaks are simulated once per shape and kept in the estimator's `StageCache`, so the planner's ladder
and repeated questions cost nothing after the first time. Within simulations a `MetaOpMemo` answers repeated meta
ops from recorded output metadata (same bytes, a fraction of the time), and with an `EstimateCache` the figures
outlive the process: after a restart the first pre-flight reads them instead of building and running the models.

The modules that build and simulate (`meta_models` pulls in diffusers and transformers, seconds of imports) are
imported on the first simulation only, so a pre-flight answered from the cache never loads them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..models.configs import ModelConfigs
from .estimate_cache import EstimateCache, estimate_scope
from .fitted_corrections import AllocatorCalibration, default_calibration
from .plan import (
    FIXED_MODEL_DTYPES,
    O_TOKENS_BACKENDS,
    OVERLAPPED_STAGE,
    ExecutionPlan,
    MemoryEstimate,
    StageEstimate,
)

if TYPE_CHECKING:
    from .meta_models import MetaModels
    from .meta_op_memo import MetaOpMemo

logger = logging.getLogger(__name__)

# Which models each stage needs on the device, in the order a run reaches the stages.
STAGE_MODELS: dict[str, tuple[str, ...]] = {
    "face_detect": ("face_detector",),
    "clip_encode": ("clip",),
    "audio_features": ("whisper",),
    "vae_encode": ("vae",),
    "unet_window": ("unet", "audio_adapters"),
    "vae_decode": ("vae",),
    "interpolate": ("rife",),
}
# The models each stage of an estimate uses (the composed stage included).
STAGE_USES: dict[str, tuple[str, ...]] = {
    **STAGE_MODELS, OVERLAPPED_STAGE: STAGE_MODELS["vae_decode"] + STAGE_MODELS["interpolate"]}
SIZE_DEPENDENT_STAGES = frozenset({"unet_window", "vae_decode", "vae_encode", "interpolate"})
ALL_MODELS: tuple[str, ...] = ("unet", "audio_adapters", "vae", "clip", "whisper", "rife", "face_detector")


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
                 *, block: int | None = None, area_scaling: bool = True, device_type: str = "cuda",
                 allocator: str | None = None, cache: EstimateCache | None = None) -> None:
        """`device_type` picks defaults: CUDA rounds allocations to 512 B; the CPU allocator does not round.
        `allocator` (CUDA): the allocator kind the default overhead is for; None asks torch.
        `cache`: figures kept across restarts (`EstimateCache.beside(history.path)`); None keeps them in memory."""
        self.configs = configs or ModelConfigs.full_size()
        self.device_type = device_type
        self.area_scaling = area_scaling
        # Exact simulations by shape family (stage key without width/height): the area-scaling fast path.
        self._families: dict[Hashable, tuple[int, int]] = {}
        if calibration is None:
            calibration = default_calibration(device_type, allocator or _allocator_kind(device_type))
        self.calibration = calibration
        self.block = block if block is not None else _default_block(device_type)
        self._models: MetaModels | None = None  # built on the first simulation (see `models`)
        self.cache = StageCache()
        self._op_memo: MetaOpMemo | None = None
        # The badge (a server thread) and the generator (the prompt worker) share one estimator: its meta modules
        # are reconfigured per simulation (feed-forward chunking), so one estimate runs at a time.
        self._lock = threading.Lock()
        self._fingerprint = self.configs.fingerprint()
        self._weights: dict[str, int] = {}  # "w:" names (see `_model_bytes`) -> resident bytes
        self._persistent = cache
        self._unsaved: dict[str, int] = {}
        self._scope: dict[str, str] = {}
        if cache is not None:
            self._scope = estimate_scope(self._fingerprint, device_type=device_type, block=self.block)
            self._preload(cache.load(self._scope))

    @property
    def models(self) -> MetaModels:
        """The meta-device modules; the first use imports diffusers/transformers and builds nothing yet."""
        if self._models is None:
            from .meta_models import MetaModels

            self._models = MetaModels(self.configs)
        return self._models

    @property
    def op_memo(self) -> MetaOpMemo:
        """Shared by every simulation of this estimator: repeated ops cost ~nothing."""
        if self._op_memo is None:
            from .meta_op_memo import MetaOpMemo

            self._op_memo = MetaOpMemo()
        return self._op_memo

    def _preload(self, stored: dict[str, int]) -> None:
        """Figures from an earlier process: activations join the shape cache, weights the weight figures."""
        unreadable = 0
        for name, value in stored.items():
            if name.startswith("w:"):
                self._weights[name] = value
                continue
            try:
                stage_key, *size = json.loads(name.removeprefix("a:"))
                self.cache.entries[(self._fingerprint, self.block, tuple(stage_key), *size)] = value
            except (ValueError, TypeError):
                unreadable += 1  # simulated again when asked for
        if unreadable:
            logger.warning("estimate cache: %d unreadable figures skipped; they will be simulated again", unreadable)
        logger.debug("estimate cache: %d figures loaded", len(stored) - unreadable)

    def _remember(self, name: str, value: int) -> None:
        if self._persistent is not None:
            self._unsaved[name] = value

    def _save(self) -> None:
        """Write new figures to the persistent cache; a failed write costs a later simulation, not the plan."""
        if self._persistent is None or not self._unsaved:
            return
        try:
            self._persistent.store(self._scope, self._unsaved)
        except OSError as error:
            logger.warning("estimate cache %s not written (%s); the next restart simulates again",
                           self._persistent.path, error)
            return
        self._unsaved = {}

    def _model_bytes(self, name: str, plan: ExecutionPlan) -> int:
        streamed = name == "unet" and plan.unet_weight_offload
        dtype = FIXED_MODEL_DTYPES.get(name, plan.dtype)
        key = "w:" + json.dumps([name, f"torch.{dtype}", streamed])  # str(torch dtype): the stored files' keys
        if key not in self._weights:
            import torch  # a figure not in the cache: the modules are built and measured

            if streamed:
                value = self.models.streamed_unet_bytes(plan.torch_dtype, self.block)
            else:
                value = self.models.weight_bytes(name, getattr(torch, dtype), self.block)
            self._weights[key] = value
            self._remember(key, value)
        return self._weights[key]

    def resident_models(self, stage: str, plan: ExecutionPlan) -> tuple[str, ...]:
        """Models on the device during `stage`: all of them (official behaviour) or only the stage's own."""
        return STAGE_MODELS[stage] if plan.offload_idle_models else ALL_MODELS

    def _stage_key(self, stage: str, p: ExecutionPlan) -> Hashable:
        """Everything a stage's activation peak depends on, except the frame size."""
        if stage == "unet_window":
            return (stage, p.cfg_batch, p.ff_chunk, p.attention, p.dtype)
        if stage == "vae_decode":
            return (stage, p.decode_chunk, p.attention, p.dtype)
        if stage == "vae_encode":
            return (stage, p.attention, p.dtype)
        if stage == "clip_encode":
            return (stage, p.attention, p.dtype)
        if stage == "audio_features":
            return (stage, p.attention)
        if stage == "interpolate":
            return (stage,)
        raise KeyError(f"unknown stage {stage!r}")

    def _simulate(self, stage: str, p: ExecutionPlan) -> int:
        from . import stage_simulation as stages

        block, memo, models = self.block, self.op_memo, self.models
        if stage == "unet_window":
            return stages.simulate_unet_window(models.get("unet", p.torch_dtype), p, self.configs, block, memo)
        if stage == "vae_decode":
            return stages.simulate_vae_decode(models.get("vae", p.torch_dtype), p, block, memo)
        if stage == "vae_encode":
            return stages.simulate_vae_encode(models.get("vae", p.torch_dtype), p, block, memo)
        if stage == "clip_encode":
            return stages.simulate_clip(models.get("clip", p.torch_dtype), p, block, memo)
        if stage == "interpolate":
            return stages.simulate_interpolation(models.get("rife", stages.RIFE_DTYPE), p, block, memo)
        return stages.simulate_whisper(models.get("whisper", stages.WHISPER_DTYPE), p, self.configs, block, memo)

    def _activation(self, stage: str, plan: ExecutionPlan, exact: bool) -> tuple[int, str]:
        """(bytes, how): how is "simulated", "cached" or "scaled" (area fast path)."""
        if stage == "face_detect":
            return 0, "fixed"  # runs once on one small image; its weights are counted
        family = (self._fingerprint, self.block, self._stage_key(stage, plan))
        sized = stage in SIZE_DEPENDENT_STAGES
        key = (*family, plan.width, plan.height) if sized else family
        # Math attention grows with tokens squared, so only O(tokens) backends (and RIFE, no attention) scale.
        scalable = sized and (plan.attention in O_TOKENS_BACKENDS or stage == "interpolate")
        if key in self.cache.entries or exact or not scalable or family not in self._families:
            value, cached = self.cache.get_or_compute(key, lambda: self._simulate(stage, plan))
            if not cached:
                self._remember("a:" + json.dumps(key[2:]), value)
            if sized:
                self._families[family] = (plan.width * plan.height, value)
            return value, "cached" if cached else "simulated"
        # Activations are proportional to pixel area (flash/mem-efficient attention): scale an exact result.
        area, value = self._families[family]
        return round(value * plan.width * plan.height / area), "scaled"

    def estimate(self, plan: ExecutionPlan, free_bytes: int | None = None, *,
                 exact: bool | None = None) -> MemoryEstimate:
        """Per-stage and overall peak of `plan`. Duration does not enter: whole-clip tensors live on the host.

        exact=False allows the area-scaling fast path (default: the estimator's `area_scaling` setting).
        """
        with self._lock:
            return self._estimate(plan, free_bytes, (not self.area_scaling) if exact is None else exact)

    def _estimate(self, plan: ExecutionPlan, free_bytes: int | None, exact: bool) -> MemoryEstimate:
        started = time.perf_counter()
        hits = 0
        scaled: list[str] = []
        results: dict[str, StageEstimate] = {}
        for stage in STAGE_MODELS:
            if stage == "interpolate" and not plan.interpolate:
                continue
            activation, how = self._activation(stage, plan, exact)
            hits += int(how == "cached")
            if how == "scaled":
                scaled.append(stage)
            resident = self.resident_models(stage, plan)
            weights = sum(self._model_bytes(name, plan) for name in resident)
            results[stage] = StageEstimate(stage, weights, activation, resident)
        if plan.overlap_decode and "interpolate" in results:
            results[OVERLAPPED_STAGE] = self._overlapped(results["vae_decode"], results["interpolate"], plan)
        self._save()
        raw = max(s.peak_bytes for s in results.values())
        # The allocator's overhead grows with each stage's activations (weights pack tightly at load).
        with_overhead = max(s.peak_bytes + self.calibration.overhead(s.activation_bytes) for s in results.values())
        estimate = MemoryEstimate(
            stages=results, overhead_bytes=with_overhead - raw, calibration=self.calibration.source,
            simulated_seconds=time.perf_counter() - started, cache_hits=hits, free_bytes=free_bytes,
            exact=not scaled,
        )
        if scaled:
            estimate.notes.append(f"scaled by pixel area from an exact simulation: {', '.join(scaled)}")
        logger.debug("estimate %sx%s cfg=%s: %.2f GiB (%s)", plan.width, plan.height, plan.cfg_batch,
                     estimate.peak_bytes / 2**30, estimate.dominant_stage)
        return estimate

    def _overlapped(self, decode: StageEstimate, interpolate: StageEstimate, plan: ExecutionPlan) -> StageEstimate:
        """Decode beside interpolation: both stages' models and both activation peaks at once (an upper bound:
        the two peaks need not coincide, but nothing keeps them apart)."""
        resident = tuple(dict.fromkeys((*decode.models, *interpolate.models)))
        weights = sum(self._model_bytes(name, plan) for name in resident)
        return StageEstimate(OVERLAPPED_STAGE, weights, decode.activation_bytes + interpolate.activation_bytes,
                             resident)

    def set_calibration(self, calibration: AllocatorCalibration) -> None:
        """New allocator calibration (e.g. refitted from history); the activation cache stays valid."""
        self.calibration = calibration


def _allocator_kind(device_type: str) -> str:
    if device_type != "cuda":
        return "native"
    from .free_memory import cuda_allocator_kind  # asks torch

    return cuda_allocator_kind()


def _default_block(device_type: str) -> int:
    """CUDA rounds allocations to 512 B; the CPU allocator does not round."""
    if device_type == "cpu":
        return 1
    from .fitted_corrections import CUDA_BLOCK_BYTES

    return CUDA_BLOCK_BYTES


def estimate_peak(plan: ExecutionPlan, model_configs: ModelConfigs | None = None, free_bytes: int | None = None,
                  *, estimator: MemoryEstimator | None = None) -> MemoryEstimate:
    """One-shot prediction; pass a long-lived `estimator` to reuse its per-shape cache."""
    estimator = estimator or MemoryEstimator(model_configs)
    return estimator.estimate(plan, free_bytes)
