"""One pre-flight for the badge, the Plan node and the generator: the same inputs give the same decision, for
every preset x policy x precision; presets keep the user's policy; only a refusal becomes a "will not fit"."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import portrait_rgb

from sonic_guard.conditioning.reference_image import prepare_reference
from sonic_guard.errors import BadInputError, MemoryPlanError
from sonic_guard.face import make_face_detector
from sonic_guard.job import preflight_inputs
from sonic_guard.memory.estimator import MemoryEstimator
from sonic_guard.memory.fitted_corrections import AllocatorCalibration, TimeModel, cfg_call_batches
from sonic_guard.memory.planner import POLICIES
from sonic_guard.memory.preflight import (
    PRECISIONS,
    comparable,
    decide,
    dtype_name,
    inputs_from_widgets,
    plan_dtype,
    preflight_estimator,
    verdict,
)
from sonic_guard.memory.presets import PRESET_CHOICES
from sonic_guard.models.configs import ModelConfigs
from sonic_guard.settings import GenerationSettings

WIDGETS = {"min_resolution": 256, "inference_steps": 10, "dynamic_scale": 1.0, "interpolation": "none",
           "duration": 4.0, "time_budget_s": 0.0}


@pytest.fixture(scope="module")
def estimator() -> MemoryEstimator:
    return MemoryEstimator(ModelConfigs.tiny(), AllocatorCalibration(fixed_bytes=0, fragmentation=0.0))


@pytest.fixture(scope="module")
def square_reference():
    """The generator's reference for a square photo without cropping: the badge assumes a square crop."""
    return prepare_reference(portrait_rgb(), min_resolution=256, expand_ratio=0.5, crop=False,
                             detector=make_face_detector(None))


def generator_decision(reference, widgets: dict, precision: str, device_type: str, free: int,
                       estimator: MemoryEstimator):
    """What the generator decides: its settings from the widgets, the real reference, the loaded dtype."""
    settings = GenerationSettings(min_resolution=widgets["min_resolution"], inference_steps=widgets["inference_steps"],
                                  dynamic_scale=widgets["dynamic_scale"], interpolation=widgets["interpolation"])
    dtype = dtype_name(plan_dtype(precision, device_type))
    inputs = preflight_inputs(reference, settings, widgets["duration"], torch.device(device_type),
                              policy=widgets["memory_policy"], preset=widgets["preset"],
                              time_budget_s=widgets["time_budget_s"] or None, dtype=dtype)
    return decide(inputs, free, estimator)


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_badge_and_generator_give_the_same_answer(estimator, square_reference, device_type: str) -> None:
    largest = inputs_from_widgets({**WIDGETS, "preset": "hd", "memory_policy": "off"}, dtype="float32",
                                  device_type=device_type)
    requested = decide(largest, 2**40, estimator).estimate.peak_bytes
    free_levels = (2**40, int(requested * 0.5), int(requested * 0.05))  # fits, needs bending, cannot fit
    compared = 0
    for preset, policy, precision, free in itertools.product(PRESET_CHOICES, POLICIES, PRECISIONS, free_levels):
        widgets = {**WIDGETS, "preset": preset, "memory_policy": policy, "precision": precision}
        dtype = dtype_name(plan_dtype(precision, device_type))
        badge = verdict(inputs_from_widgets(widgets, dtype=dtype, device_type=device_type), free, estimator)
        try:
            generator = comparable(generator_decision(square_reference, widgets, precision, device_type, free,
                                                      estimator))
        except MemoryPlanError:
            assert badge["verdict"] == "refuse", (preset, policy, precision, free, badge)
            continue
        assert comparable(badge["plan"]) == generator, (preset, policy, precision, free)
        compared += 1
    assert compared > len(PRESET_CHOICES) * len(POLICIES)  # most combinations plan; the others refuse alike


def test_a_preset_keeps_the_strict_policy(estimator) -> None:
    """hd under strict on too little memory is refused, not silently resolved with the auto ladder."""
    widgets = {**WIDGETS, "preset": "hd", "memory_policy": "strict"}
    inputs = inputs_from_widgets(widgets, dtype="float32", device_type="cpu")
    assert inputs.memory_policy == "strict"
    need = decide(inputs, 2**40, estimator).estimate.peak_bytes
    with pytest.raises(MemoryPlanError):
        decide(inputs, need // 2, estimator)
    auto = decide(inputs_from_widgets({**widgets, "memory_policy": "auto"}, dtype="float32", device_type="cpu"),
                  need // 2, estimator)
    assert auto.plan.levers_applied or auto.plan.downgrades


def test_the_plan_follows_the_loaders_precision() -> None:
    assert plan_dtype("auto", "cuda") == torch.float16 and plan_dtype("auto", "cpu") == torch.float32
    assert plan_dtype("bf16", "cuda") == torch.bfloat16 and plan_dtype("fp32", "cuda") == torch.float32
    inputs = inputs_from_widgets({**WIDGETS, "precision": "fp32"}, dtype=dtype_name(plan_dtype("fp32", "cuda")),
                                 device_type="cuda")
    assert inputs.dtype == "float32"
    with pytest.raises(BadInputError, match="precision 'fp8'"):
        plan_dtype("fp8", "cuda")


def test_bad_widget_values_are_named() -> None:
    with pytest.raises(BadInputError, match="memory_policy 'greedy'"):
        inputs_from_widgets({**WIDGETS, "memory_policy": "greedy"}, dtype="float32", device_type="cpu")
    with pytest.raises(BadInputError, match="preset 'ultra'"):
        inputs_from_widgets({**WIDGETS, "preset": "ultra"}, dtype="float32", device_type="cpu")


def test_a_planner_bug_is_not_shown_as_will_not_fit() -> None:
    class BrokenEstimator:  # stands for a bug anywhere below the planner
        def estimate(self, *args, **kwargs):
            raise ZeroDivisionError("a bug, not a refusal")

    inputs = inputs_from_widgets(WIDGETS, dtype="float32", device_type="cpu")
    with pytest.raises(ZeroDivisionError):
        verdict(inputs, 2**40, BrokenEstimator())


@pytest.mark.parametrize(("cfg_batch", "batches"), [(3, (3,)), (2, (2, 1)), (1, (1, 1, 1))])
def test_every_grouping_runs_all_three_branches(cfg_batch: int, batches: tuple[int, ...]) -> None:
    assert cfg_call_batches(cfg_batch) == batches
    model = TimeModel(per_call_s=0.0, per_pixel_frame_s=1e-8, decode_per_pixel_frame_s=0.0)
    # Only the per-call overhead may differ between groupings: the pixel work is three branches each time.
    assert model.run_seconds(512, 512, 10, 100, cfg_batch) == pytest.approx(model.run_seconds(512, 512, 10, 100, 3))
    with_overhead = TimeModel(per_call_s=1.0, per_pixel_frame_s=0.0, decode_per_pixel_frame_s=0.0)
    assert with_overhead.run_seconds(512, 512, 1, 25, cfg_batch, window=25) == pytest.approx(len(batches))


def test_the_shared_estimator_keeps_its_figures_beside_the_history(square_reference, tmp_path) -> None:
    """The badge's answer after a restart (a new estimator on the same history folder) comes from the file the
    generator's pre-flight wrote, and is the same answer; nothing is simulated again."""
    history = tmp_path / "sonic_guard" / "history.sqlite"
    calibration = AllocatorCalibration(fixed_bytes=0, fragmentation=0.0)
    widgets = {**WIDGETS, "preset": "custom", "memory_policy": "auto", "precision": "fp16"}
    before = preflight_estimator(ModelConfigs.tiny(), device_type="cuda", history_path=history,
                                 calibration=calibration)
    generator = generator_decision(square_reference, widgets, "fp16", "cuda", 2**40, before)
    assert before.cache.misses > 0 and (history.parent / "estimate_cache.json").is_file()
    after = preflight_estimator(ModelConfigs.tiny(), device_type="cuda", history_path=history,
                                calibration=calibration)
    badge = verdict(inputs_from_widgets(widgets, dtype="float16", device_type="cuda"), 2**40, after)
    assert after.cache.misses == 0
    assert comparable(badge["plan"]) == comparable(generator)
