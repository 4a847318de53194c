"""The estimator on small configurations of the engine's own modules (meta device, no real memory)."""

from __future__ import annotations

import pytest

from sonic_guard.memory.estimator import ALL_MODELS, STAGE_USES, MemoryEstimator, estimate_peak
from sonic_guard.memory.fitted_corrections import AllocatorCalibration
from sonic_guard.memory.plan import ExecutionPlan
from sonic_guard.models.configs import ModelConfigs


@pytest.fixture(scope="module")
def estimator() -> MemoryEstimator:
    return MemoryEstimator(ModelConfigs.tiny(), AllocatorCalibration(fixed_bytes=0, fragmentation=0.0))


def test_every_stage_is_estimated_and_the_peak_is_the_largest(estimator: MemoryEstimator) -> None:
    estimate = estimator.estimate(ExecutionPlan(width=256, height=256, dtype="float32"))
    assert set(estimate.stages) == set(STAGE_USES)  # decode beside interpolation (the default) included
    assert estimate.raw_peak_bytes == max(s.peak_bytes for s in estimate.stages.values())
    assert estimate.stages["unet_window"].activation_bytes > 0
    assert estimate.stages["vae_decode"].activation_bytes > 0
    assert estimate.peak_bytes == estimate.raw_peak_bytes  # zero overhead calibration
    assert estimate.to_dict()["dominant_stage"] == estimate.dominant_stage


def test_repeat_estimate_is_answered_from_the_cache(estimator: MemoryEstimator) -> None:
    plan = ExecutionPlan(width=192, height=128, dtype="float32", decode_chunk=3)
    first = estimator.estimate(plan, exact=True)
    misses = estimator.cache.misses
    second = estimator.estimate(plan, exact=True)  # how fast a cached pre-flight is: bench/bench_estimator.py
    assert estimator.cache.misses == misses
    assert second.peak_bytes == first.peak_bytes
    assert second.cache_hits >= 4


def test_area_scaling_fast_path_agrees_with_simulation() -> None:
    fresh = MemoryEstimator(ModelConfigs.tiny())
    fresh.estimate(ExecutionPlan(width=256, height=256, dtype="float32"), exact=True)
    target = ExecutionPlan(width=384, height=320, dtype="float32")
    scaled = fresh.estimate(target)
    assert not scaled.exact
    simulated = fresh.estimate(target, exact=True)
    for stage in ("unet_window", "vae_decode", "vae_encode", "interpolate"):
        a, b = scaled.stages[stage].activation_bytes, simulated.stages[stage].activation_bytes
        assert abs(a - b) / b < 0.02, (stage, a, b)


def test_sequential_cfg_cuts_unet_activations_about_threefold(estimator: MemoryEstimator) -> None:
    batched = estimator.estimate(ExecutionPlan(width=256, height=256, dtype="float32"), exact=True)
    sequential = estimator.estimate(ExecutionPlan(width=256, height=256, dtype="float32", cfg_batch=1), exact=True)
    ratio = batched.stages["unet_window"].activation_bytes / sequential.stages["unet_window"].activation_bytes
    assert 2.5 < ratio <= 3.05


def test_smaller_decode_chunk_and_fused_attention_lower_their_stage(estimator: MemoryEstimator) -> None:
    base = ExecutionPlan(width=256, height=256, dtype="float32", attention="math")
    chunked = estimator.estimate(ExecutionPlan(width=256, height=256, dtype="float32", attention="math",
                                               decode_chunk=2), exact=True)
    math = estimator.estimate(base, exact=True)
    flash = estimator.estimate(ExecutionPlan(width=256, height=256, dtype="float32"), exact=True)
    assert chunked.stages["vae_decode"].activation_bytes < math.stages["vae_decode"].activation_bytes
    assert flash.stages["unet_window"].activation_bytes < math.stages["unet_window"].activation_bytes


def test_offload_levers_change_resident_weights(estimator: MemoryEstimator) -> None:
    plan = ExecutionPlan(width=128, height=128, dtype="float32")
    resident = estimator.estimate(plan, exact=True)
    offloaded = estimator.estimate(ExecutionPlan(width=128, height=128, dtype="float32", offload_idle_models=True))
    streamed = estimator.estimate(ExecutionPlan(width=128, height=128, dtype="float32", offload_idle_models=True,
                                                unet_weight_offload=True))
    assert resident.stages["vae_decode"].models == ALL_MODELS
    assert offloaded.stages["vae_decode"].models == ("vae",)
    assert offloaded.stages["unet_window"].weights_bytes < resident.stages["unet_window"].weights_bytes
    assert streamed.stages["unet_window"].weights_bytes < offloaded.stages["unet_window"].weights_bytes
    assert offloaded.stages["vae_decode"].weights_bytes == estimator.models.weight_bytes("vae", plan.torch_dtype,
                                                                                         estimator.block)


def test_half_precision_halves_the_unet_window() -> None:
    fresh = MemoryEstimator(ModelConfigs.tiny(), AllocatorCalibration(fixed_bytes=0, fragmentation=0.0))
    full = estimate_peak(ExecutionPlan(width=256, height=256, dtype="float32"), estimator=fresh)
    half = estimate_peak(ExecutionPlan(width=256, height=256, dtype="float16"), estimator=fresh)
    ratio = full.stages["unet_window"].activation_bytes / half.stages["unet_window"].activation_bytes
    assert 1.9 < ratio < 2.1


def test_calibration_adds_fixed_and_proportional_overhead() -> None:
    calibration = AllocatorCalibration(fixed_bytes=1000, fragmentation=0.5)
    fresh = MemoryEstimator(ModelConfigs.tiny(), calibration)
    estimate = fresh.estimate(ExecutionPlan(width=128, height=128), free_bytes=10**12)
    # fragmentation applies to each stage's activations, not to the weights resident beside them
    expected = max(s.peak_bytes + 1000 + int(s.activation_bytes * 0.5) for s in estimate.stages.values())
    assert estimate.peak_bytes == expected
    unet = estimate.stages["unet_window"]
    assert expected < estimate.raw_peak_bytes + 1000 + int(estimate.raw_peak_bytes * 0.5)
    assert unet.weights_bytes > 0
    assert estimate.fits is True


def test_default_overhead_follows_the_cuda_allocator_kind() -> None:
    from sonic_guard.memory.free_memory import cuda_allocator_kind

    native = MemoryEstimator(ModelConfigs.tiny(), allocator="native").calibration
    pooled = MemoryEstimator(ModelConfigs.tiny(), allocator="cudaMallocAsync").calibration
    assert native.fragmentation > pooled.fragmentation > 0
    assert "native" in native.source and "cudaMallocAsync" in pooled.source
    assert cuda_allocator_kind({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}) == "expandable_segments"
    assert cuda_allocator_kind({}) == "native"
