"""Each rank of a multi-device run plans its own memory levers for its own device (real gloo worker processes).

Two CPU ranks given different budgets (SONIC_GUARD_FREE_MEMORY_BYTES "cpu:1=...") report different lever plans;
their video stays within the fp32 noise the levers themselves cause, measured here in one process. A rank whose
budget cannot hold the size even with every lever fails the run at once, naming the rank, device and bytes, and
leaves no worker behind.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import portrait_rgb
from test_distributed_windows import CPU, SEED, live_workers, models, rank_job, run_inputs, torch_threads

from sonic_guard.errors import MemoryPlanError
from sonic_guard.inputs.audio_loading import LoadedAudio, fit_duration, load_audio_file
from sonic_guard.job import JobEnvironment, JobRequest, add_rank_plans, model_configs_of, run_job
from sonic_guard.memory.estimator import MemoryEstimator
from sonic_guard.memory.free_memory_cap import ENV_VAR
from sonic_guard.memory.planner import DEFAULT_SAFETY_MARGIN
from sonic_guard.runs.pipeline import default_placer, sample_clip
from sonic_guard.runs.runtime import RunHooks
from sonic_guard.sampling.multi_device.launcher import sample_on_devices
from sonic_guard.sampling.multi_device.rank_plan import RankPlan, RankStagesEstimator, RankWontFitError, plan_rank
from sonic_guard.settings import GenerationSettings

__all__ = ["models", "run_inputs"]  # the fixtures, shared with the bit-for-bit tests

# the levers the planner takes in order (levers.LEVER_ORDER) up to one CFG branch at a time
UP_TO_CFG = {"offload_idle_models": True, "ff_chunk": 4, "cfg_batch": 1}
GIB = 1024**3
EVERY_LEVER = {**UP_TO_CFG, "unet_weight_offload": True}
UP_TO_FF = {"offload_idle_models": True, "ff_chunk": 4}


def needed_free(models, plan, **levers) -> int:
    """The free bytes the planner asks of a rank for `plan` with `levers` (its peak over the safety margin)."""
    estimator = RankStagesEstimator(MemoryEstimator(model_configs_of(models), device_type="cpu"))
    return int(estimator.estimate(replace(plan, **levers)).peak_bytes / (1.0 - DEFAULT_SAFETY_MARGIN)) + 1


def one_process(models, run_inputs, **levers) -> torch.Tensor:
    conditioning, settings, plan = run_inputs
    plan = replace(plan, **levers)
    with torch_threads(1):
        return sample_clip(models, conditioning, settings, plan, default_placer(CPU, plan), CPU, RunHooks(),
                           seed=SEED, on_window=lambda done, total: None)


def two_cpu_ranks(models, run_inputs):
    return replace(rank_job(models, run_inputs, 2, timeout_s=60.0), devices=("cpu:0", "cpu:1"))


def test_ranks_with_different_budgets_choose_their_own_levers(models, run_inputs, monkeypatch) -> None:
    plan = run_inputs[2]
    # between what one CFG branch at a time needs and what feed-forward chunking alone needs
    budget = (needed_free(models, plan, **UP_TO_CFG) + needed_free(models, plan, **UP_TO_FF)) // 2
    monkeypatch.setenv(ENV_VAR, f"cpu:1={budget}")
    reported: list[RankPlan] = []
    got = sample_on_devices(two_cpu_ranks(models, run_inputs), lambda done, total: None,
                            on_rank_plan=reported.append)
    plans = {plan.rank: plan for plan in reported}
    assert sorted(plans) == [0, 1], reported
    roomy, tight = plans[0], plans[1]
    assert roomy.device == "cpu:0" and roomy.levers_applied == () and roomy.cfg_batch == 3, roomy
    assert roomy.free_bytes > budget  # uncapped: the RAM the worker measured
    assert tight.device == "cpu:1" and tight.free_bytes == budget, tight
    # the ladder (levers.LEVER_ORDER) stops at one CFG branch at a time, before weight streaming
    assert tight.cfg_batch == 1 and not tight.unet_weight_offload and "cfg_batch: 3→1" in tight.levers_applied, tight
    assert tight.note().startswith("rank 1 (cpu:1): CFG one branch at a time") and "GiB free" in tight.note()
    assert live_workers() == []
    # what the run's report shows of them (run_job collects the plans the launcher hands on)
    report: dict = {"notes": []}
    add_rank_plans(report, {"cpu": 8 * budget, "cpu:0": roomy.free_bytes, "cpu:1": budget},
                   [plan.to_plain() for plan in reversed(reported)])
    assert [plan["rank"] for plan in report["rank_plans"]] == [0, 1]
    assert report["notes"][0].startswith("size and steps planned for the tightest device, cpu:1")
    assert report["notes"][1:] == [roomy.note(), tight.note()]
    assert RankPlan.from_plain(report["rank_plans"][1]) == tight

    # fp32 noise of the levers, measured in one process: all windows batched vs all windows with rank 1's levers
    batched = one_process(models, run_inputs)
    with_levers = one_process(models, run_inputs, **UP_TO_CFG)
    noise = (with_levers - batched).abs().max().item()
    difference = (got - batched).abs().max().item()
    # rank 1's windows carry that noise, rank 0's none; where the two kinds of window are blended the sum may
    # round once more: one fp32 unit at the latents' largest magnitude
    rounding = torch.finfo(torch.float32).eps * batched.abs().max().item()
    print(f"rank levers: max |mixed ranks - one process| = {difference:.3e}, lever noise = {noise:.3e}, "
          f"one rounding = {rounding:.1e}")
    assert 0 < noise and difference <= noise + rounding, (difference, noise, rounding)


def test_a_rank_too_small_for_the_size_fails_fast_and_names_itself(models, run_inputs, monkeypatch) -> None:
    plan = run_inputs[2]
    smallest = needed_free(models, plan, **EVERY_LEVER)
    monkeypatch.setenv(ENV_VAR, f"cpu:1={smallest // 2}")
    started = time.monotonic()
    with pytest.raises(RankWontFitError) as caught:
        sample_on_devices(two_cpu_ranks(models, run_inputs), lambda done, total: None)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert caught.value.reason == "will_not_fit"  # the editor shows it as a refusal, not a crash
    assert f"rank 1 (cpu:1) cannot run the sampling at {plan.width}x{plan.height}" in message, message
    assert f"({smallest // 2} bytes) free" in message and "GiB free" in message and "Fix:" in message, message
    assert "unet_weight_offload" in message, message  # every lever was tried first
    assert elapsed < 45.0, f"the refusal took {elapsed:.1f} s"
    assert live_workers() == []


def job_environment(models, free_on) -> JobEnvironment:
    """The server's own device is the CPU with 64 GiB; `free_on` answers for the other listed devices."""
    return JobEnvironment(
        device=CPU, free_memory=lambda: 64 * GIB, is_oom=lambda error: isinstance(error, torch.OutOfMemoryError),
        release_memory=lambda: None, estimator=MemoryEstimator(model_configs_of(models)), free_memory_on=free_on,
    )


def spread_job(tmp_path: Path, audio: LoadedAudio) -> JobRequest:
    return JobRequest(image=portrait_rgb(), audio=audio, output_path=tmp_path / "out.mp4",
                      settings=GenerationSettings(min_resolution=128, inference_steps=1, interpolation="none",
                                                  devices="cpu:0,cpu:1"))


@pytest.fixture(scope="module")
def one_second(tmp_path_factory: pytest.TempPathFactory) -> LoadedAudio:
    from conftest import speak

    return fit_duration(load_audio_file(speak(tmp_path_factory.mktemp("hi") / "hi.wav", "Hi there.")), 1.0)[0]


def test_the_size_is_planned_for_the_tightest_device(models, one_second, tmp_path: Path) -> None:
    free = {"cpu:0": 56 * GIB, "cpu:1": 48 * GIB}
    report = run_job(models, spread_job(tmp_path, one_second), job_environment(models, free.__getitem__)).report
    assert report["device_free_bytes"] == {"cpu": 64 * GIB, **free}
    assert "size and steps planned for the tightest device, cpu:1 (48.00 GiB free)" in " ".join(report["notes"])
    assert report["sampling_devices"] == ["cpu:0", "cpu:1"] and report["video"]["frames"] > 0
    assert [plan["rank"] for plan in report["rank_plans"]] == [0, 1]
    assert any(note.startswith("rank 1 (cpu:1): ") for note in report["notes"]), report["notes"]
    assert live_workers() == []


def test_a_listed_device_too_small_for_any_plan_is_refused_before_any_worker_starts(models, one_second,
                                                                                   tmp_path: Path) -> None:
    free = {"cpu:0": 56 * GIB, "cpu:1": 1024**2}
    started = time.monotonic()
    with pytest.raises(MemoryPlanError) as caught:
        run_job(models, spread_job(tmp_path, one_second), job_environment(models, free.__getitem__))
    message = str(caught.value)
    assert message.startswith(f"cpu:1 has the least free memory of the listed devices ({1024**2} bytes)"), message
    assert "remove it from devices" in message and "Expected:" in message, message
    assert time.monotonic() - started < 30.0 and live_workers() == []
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("policy", ["auto", "strict", "off"])
def test_a_rank_keeps_to_the_runs_memory_policy(models, run_inputs, policy: str) -> None:  # noqa: F811
    """auto: the rank takes the levers its device needs; strict: the parent's levers or a refusal; off: the
    parent's levers unchecked. (plan_rank is what each worker calls after measuring its device.)"""
    _, _, plan = run_inputs
    parent = replace(plan, policy=policy)
    estimator = MemoryEstimator(model_configs_of(models), device_type="cpu")
    tight = needed_free(models, plan, **UP_TO_CFG)  # enough only with one CFG branch at a time
    if policy == "strict":
        with pytest.raises(RankWontFitError) as raised:
            plan_rank(parent, 1, "cpu:1", tight, estimator)
        assert "policy strict" in raised.value.problem and "'auto'" in raised.value.fix
        roomy = needed_free(models, plan)
        chosen, reported = plan_rank(parent, 1, "cpu:1", roomy, estimator)
        assert chosen == parent and reported.cfg_batch == plan.cfg_batch
        return
    chosen, reported = plan_rank(parent, 1, "cpu:1", tight, estimator)
    if policy == "off":
        assert chosen == parent and reported.levers_applied == parent.levers_applied
    else:
        assert chosen.cfg_batch == 1 and reported.cfg_batch == 1 and chosen.policy == "auto"
