"""The cold plan's breakdown record (bench/bench_estimator.py reports it): which stages were simulated and which
models were built, read off the estimator's op memo and meta models. Seconds are recorded, never asserted."""

from __future__ import annotations

from sonic_guard.memory.estimator import STAGE_MODELS, MemoryEstimator
from sonic_guard.memory.plan import ExecutionPlan
from sonic_guard.models.configs import ModelConfigs

SIMULATED_STAGES = {stage for stage in STAGE_MODELS if stage != "face_detect"}  # face detection is a fixed figure


def test_every_simulated_stage_and_built_model_is_in_the_breakdown() -> None:
    estimator = MemoryEstimator(ModelConfigs.tiny(), device_type="cpu")
    estimator.estimate(ExecutionPlan(min_resolution=64, width=64, height=64, dtype="float32"), exact=True)
    memo, models = estimator.op_memo, estimator.models
    assert set(memo.stage_seconds) == SIMULATED_STAGES
    assert all(seconds > 0 for seconds in memo.stage_seconds.values())
    assert set(models.build_seconds) == {"unet", "audio_adapters", "vae", "clip", "whisper", "rife"}
    assert memo.misses > 0


def test_a_repeated_estimate_adds_no_simulation_time() -> None:
    estimator = MemoryEstimator(ModelConfigs.tiny(), device_type="cpu")
    plan = ExecutionPlan(min_resolution=64, width=64, height=64, dtype="float32")
    estimator.estimate(plan, exact=True)
    first = dict(estimator.op_memo.stage_seconds)
    estimator.estimate(plan, exact=True)  # answered from the stage cache: no tracker is entered
    assert estimator.op_memo.stage_seconds == first
