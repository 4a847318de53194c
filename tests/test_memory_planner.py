"""Planner decisions across a grid of faked free-memory figures (the only fake), on tiny engine modules."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sonic_guard.errors import BadInputError, MemoryPlanError
from sonic_guard.memory.estimator import MemoryEstimator
from sonic_guard.memory.fitted_corrections import AllocatorCalibration, TimeModel
from sonic_guard.memory.levers import LEVER_ORDER
from sonic_guard.memory.plan import ExecutionPlan, RunRequest, frame_size
from sonic_guard.memory.planner import PlanDecision, plan_run, usable_bytes
from sonic_guard.memory.presets import preset_request, resolve_preset
from sonic_guard.memory.recovery import next_rung_after_oom
from sonic_guard.models.configs import ModelConfigs

REQUEST = RunRequest(image_width=256, image_height=320, min_resolution=256, resolution_floor=128, dtype="float32",
                     audio_seconds=4.0)
GRID = (1.2, 0.95, 0.8, 0.6, 0.45, 0.3, 0.2, 0.1, 0.02)


@pytest.fixture(scope="module")
def estimator() -> MemoryEstimator:
    return MemoryEstimator(ModelConfigs.tiny(), AllocatorCalibration(fixed_bytes=0, fragmentation=0.0))


@pytest.fixture(scope="module")
def requested_peak(estimator: MemoryEstimator) -> int:
    return estimator.estimate(REQUEST.requested_plan(), exact=True).peak_bytes


def min_resolution_above(plan: ExecutionPlan) -> ExecutionPlan:
    size = plan.min_resolution + 64
    width, height = frame_size(size, REQUEST.image_width, REQUEST.image_height)
    return replace(plan, min_resolution=size, width=width, height=height)


def decide(estimator: MemoryEstimator, free: int) -> PlanDecision | MemoryPlanError:
    try:
        return plan_run(REQUEST, free, estimator, policy="auto", safety_margin=0.0)
    except MemoryPlanError as error:
        return error


def test_ladder_over_a_grid_of_free_memory(estimator: MemoryEstimator, requested_peak: int) -> None:
    last_resolution = 10**9
    refused_seen = False
    for fraction in GRID:  # decreasing free memory
        free = int(requested_peak * fraction)
        outcome = decide(estimator, free)
        if isinstance(outcome, MemoryPlanError):
            refused_seen = True
            decision = outcome.decision
            assert decision.plan.min_resolution == REQUEST.resolution_floor
            assert "GiB" in outcome.problem and outcome.fix
            continue
        assert not refused_seen, "a plan fitted less memory than one that was refused"
        plan = outcome.plan
        assert outcome.estimate.peak_bytes <= free
        assert plan.width % 64 == 0 and plan.height % 64 == 0
        assert REQUEST.resolution_floor <= plan.min_resolution <= last_resolution
        last_resolution = plan.min_resolution
        if fraction >= 1.0:
            assert not plan.levers_applied and not plan.downgrades
        if plan.downgrades:
            # Quality-neutral levers come first: at the rung before the last downgrade, no lever left would
            # have lowered the stage that dominated there.
            above = min_resolution_above(plan)
            estimate = estimator.estimate(above)
            dominant = estimate.dominant_stage
            before = estimate.stages[dominant].peak_bytes
            for lever in LEVER_ORDER:
                stepped = lever.apply(above, ("flash", "mem_efficient", "math")) if dominant in lever.stages else None
                if stepped is not None:
                    after = estimator.estimate(stepped).stages[dominant].peak_bytes
                    assert after > before * 0.99 - 1, lever.name
    assert refused_seen


def test_levers_alone_when_they_suffice(estimator: MemoryEstimator, requested_peak: int) -> None:
    decision = plan_run(REQUEST, int(requested_peak * 0.97), estimator, safety_margin=0.0)
    assert decision.plan.levers_applied and not decision.plan.downgrades
    assert decision.plan.min_resolution == REQUEST.min_resolution
    assert decision.to_dict()["levers_applied"] == list(decision.plan.levers_applied)


def test_safety_margin_is_applied(estimator: MemoryEstimator, requested_peak: int) -> None:
    free = int(requested_peak / 0.95)  # fits without a margin, not with the default 10 %
    assert plan_run(REQUEST, free, estimator, safety_margin=0.0).plan.levers_applied == ()
    decision = plan_run(REQUEST, free, estimator)
    assert decision.budget_bytes == usable_bytes(free, 0.10)
    assert decision.plan.levers_applied


def test_strict_refuses_before_running_and_off_only_predicts(estimator: MemoryEstimator,
                                                             requested_peak: int) -> None:
    with pytest.raises(MemoryPlanError) as raised:
        plan_run(REQUEST, requested_peak // 2, estimator, policy="strict", safety_margin=0.0)
    assert "strict" in str(raised.value) and raised.value.reason == "will_not_fit"
    fits = plan_run(REQUEST, requested_peak * 2, estimator, policy="strict", safety_margin=0.0)
    assert fits.plan == replace(REQUEST.requested_plan(), policy="strict")  # the plan says what it was made under
    off = plan_run(REQUEST, requested_peak // 2, estimator, policy="off", safety_margin=0.0)
    assert off.plan == replace(REQUEST.requested_plan(), policy="off") and not off.fits
    with pytest.raises(ValueError):
        plan_run(REQUEST, requested_peak, estimator, policy="sometimes")


def test_steps_drop_only_for_a_time_budget(estimator: MemoryEstimator, requested_peak: int) -> None:
    times = TimeModel(per_call_s=0.1, per_pixel_frame_s=1e-7)
    free = requested_peak * 2
    unbounded = plan_run(REQUEST, free, estimator, time_model=times)
    assert unbounded.plan.inference_steps == REQUEST.inference_steps
    budget = unbounded.predicted_seconds / 2
    halved = plan_run(REQUEST, free, estimator, time_model=times, time_budget_s=budget)
    assert halved.plan.inference_steps < REQUEST.inference_steps
    assert halved.predicted_seconds <= budget
    assert halved.plan.downgrades == (f"inference_steps: {REQUEST.inference_steps}→{halved.plan.inference_steps}",)
    hopeless = plan_run(REQUEST, free, estimator, time_model=times, time_budget_s=0.001)
    assert hopeless.plan.inference_steps == REQUEST.min_steps and hopeless.notes


def test_oom_recovery_steps_down_and_ends() -> None:
    plan = REQUEST.requested_plan()
    seen = [plan]
    while (plan := next_rung_after_oom(plan, "vae_decode", resolution_floor=128)) is not None:
        seen.append(plan)
        assert len(seen) < 20
    assert [p.decode_chunk for p in seen[:4]] == [8, 4, 2, 1]
    assert seen[-1].min_resolution == 128 and seen[-1].offload_idle_models
    unet_first = next_rung_after_oom(REQUEST.requested_plan(), "unet_window")
    assert unet_first is not None and unet_first.levers_applied[-1].endswith("(after OOM in unet_window)")
    assert unet_first.decode_chunk == 8


def test_presets_resolve_against_the_hardware(estimator: MemoryEstimator) -> None:
    hd = preset_request("HD", REQUEST)
    assert (hd.min_resolution, hd.inference_steps, hd.dynamic_scale) == (1024, 30, 1.2)
    assert preset_request("fast").min_resolution == 768 and preset_request("minimal").inference_steps == 15
    with pytest.raises(BadInputError):
        preset_request("ultra")
    roomy = resolve_preset("minimal", 10**12, estimator, base=REQUEST)
    assert roomy.plan.min_resolution == 384 and roomy.plan.inference_steps == 15
    tight_free = int(roomy.estimate.peak_bytes * 0.5)
    tight = resolve_preset("minimal", tight_free, estimator, base=REQUEST, safety_margin=0.0)
    assert tight.estimate.peak_bytes <= tight_free
