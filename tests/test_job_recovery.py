"""The job runner end to end on the small model: the plan is reported, and an OOM injected in any stage is
recovered by the planner's next rung (the only fake is the OOM itself and, for the ladder, the free memory)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import portrait_rgb

from sonic_guard.errors import OutOfMemoryAfterRetriesError
from sonic_guard.inputs.audio_loading import fit_duration, load_audio_file
from sonic_guard.job import JobEnvironment, JobRequest, model_configs_of, run_job
from sonic_guard.memory.estimator import MemoryEstimator
from sonic_guard.memory.plan import ExecutionPlan
from sonic_guard.models.checkpoints import load_sonic_models
from sonic_guard.runs.runtime import RunHooks, StageClock
from sonic_guard.settings import GenerationSettings

GIB = 2**30


@pytest.fixture(scope="module")
def models(tiny_models: Path):
    return load_sonic_models(tiny_models)


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory: pytest.TempPathFactory):
    from conftest import speak

    path = speak(tmp_path_factory.mktemp("short") / "hi.wav", "Hi there.")
    return fit_duration(load_audio_file(path), 1.0)[0]


class InjectOom:
    """A stage observer that raises a CUDA-style OOM the first time `stage` starts, like a real device would."""

    def __init__(self, stage: str) -> None:
        self.stage_name = stage
        self.fired = False
        self.clock = StageClock()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name == self.stage_name and not self.fired:
            self.fired = True
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
        with self.clock.stage(name):
            yield

    def stage_seconds(self) -> dict[str, float]:
        return self.clock.seconds


def _record(events: list[str], planned: list[dict], event: str, data: dict) -> None:
    events.append(event)
    if event == "planned":
        planned.append(data)


def environment(models, free_bytes: int, observer=None, planned: list[dict] | None = None
                ) -> tuple[JobEnvironment, list[str]]:
    events: list[str] = []
    planned = planned if planned is not None else []
    released: list[int] = []
    env = JobEnvironment(
        device=torch.device("cpu"),
        free_memory=lambda: free_bytes,
        is_oom=lambda error: isinstance(error, torch.OutOfMemoryError),
        release_memory=lambda: released.append(1),
        estimator=MemoryEstimator(model_configs_of(models)),
        hooks=RunHooks(observer=observer or StageClock()),
        on_event=lambda event, data: _record(events, planned, event, data),
    )
    return env, events


def job(tmp_path: Path, audio, **settings) -> JobRequest:
    return JobRequest(
        image=portrait_rgb(), audio=audio, output_path=tmp_path / "out.mp4",
        settings=GenerationSettings(**{"min_resolution": 128, "inference_steps": 1, "interpolation": "none",
                                       **settings}),
    )


# Every stage the engine times; bench/bench_trust.py counts failures of this test as unreported recoveries.
RECOVERY_STAGES = ["preprocess", "audio_features", "sampling", "decode", "interpolation", "encode"]


@pytest.mark.parametrize("stage", RECOVERY_STAGES)
def test_oom_in_any_stage_is_recovered_with_the_next_rung(models, short_speech, tmp_path: Path, stage: str) -> None:
    observer = InjectOom(stage)
    env, events = environment(models, 64 * GIB, observer)
    settings = {"interpolation": "blend"} if stage == "interpolation" else {}  # "none" has no such stage
    outcome = run_job(models, job(tmp_path, short_speech, **settings), env)
    report = outcome.report
    assert observer.fired, f"no stage called {stage!r} ran"
    assert report["outcome"] == "success"
    assert len(report["retries"]) == 1
    retry = report["retries"][0]
    assert retry["stage"] == stage
    assert retry["levers"], "the retry must change the plan"
    assert retry["from_plan"] != retry["to_plan"]
    assert "oom_recovered" in events
    assert outcome.result.video.path.exists() and outcome.result.video.frames > 0


def test_plan_is_reported_and_fits(models, short_speech, tmp_path: Path) -> None:
    planned: list[dict] = []
    env, events = environment(models, 64 * GIB, planned=planned)
    report = run_job(models, job(tmp_path, short_speech), env).report
    # The host hears the size and steps that actually run (profiling tags follow them).
    plan = report["plan"]
    assert planned == [{"width": plan["width"], "height": plan["height"], "inference_steps": plan["inference_steps"]}]
    assert report["predicted_peak_bytes"] > 0
    assert report["free_bytes_before"] == 64 * GIB
    assert report["plan"]["min_resolution"] == 128
    assert set(report["stage_seconds"]) >= {"preprocess", "audio_features", "sampling", "decode", "encode"}
    assert report["retries"] == []


def test_audio_notes_reach_the_headless_report(models, short_speech, tmp_path: Path) -> None:
    """What the audio loader noticed (a WAV cut short, say) is in the report of a pure-core run too, once."""
    from dataclasses import replace as dc_replace

    note = "speech.wav: the header promises 4.00 s but the file holds only 2.00 s; download it again"
    env, _ = environment(models, 64 * GIB)
    report = run_job(models, job(tmp_path, dc_replace(short_speech, notes=(note,))), env).report
    assert report["notes"].count(note) == 1


def test_low_free_memory_applies_levers_and_says_so(models, short_speech, tmp_path: Path) -> None:
    """Free memory between the fully levered peak and the requested peak: the planner must use levers (the
    resolution ladder itself is covered with faked free memory in test_memory_planner)."""
    from dataclasses import replace as dc_replace

    env, _ = environment(models, 64 * GIB)
    probe = run_job(models, job(tmp_path, short_speech), env).report
    requested = ExecutionPlan(**{k: v for k, v in probe["plan"].items() if k not in ("levers_applied", "downgrades")})
    levered = dc_replace(requested, cfg_batch=1, ff_chunk=4, decode_chunk=1, offload_idle_models=True,
                         unet_weight_offload=True)
    levered_peak = env.estimator.estimate(levered).peak_bytes
    free = int(levered_peak / 0.9 * 1.05)
    assert probe["predicted_peak_bytes"] > free * 0.9, "the test needs a request that does not fit as asked"
    env, events = environment(models, free)
    report = run_job(models, job(tmp_path, short_speech), env).report
    assert report["levers_applied"], report
    assert report["predicted_peak_bytes"] <= free * 0.9
    assert "downgraded" in events


def test_repeated_oom_gives_up_with_an_actionable_error(models, short_speech, tmp_path: Path) -> None:
    class AlwaysOom(InjectOom):
        @contextlib.contextmanager
        def stage(self, name: str) -> Iterator[None]:
            if name == "sampling":
                raise torch.OutOfMemoryError("CUDA out of memory (injected every time)")
            with self.clock.stage(name):
                yield

    env, _ = environment(models, 64 * GIB, AlwaysOom("sampling"))
    env.max_retries = 2
    with pytest.raises(OutOfMemoryAfterRetriesError) as caught:
        run_job(models, job(tmp_path, short_speech), env)
    message = str(caught.value)
    assert "sampling" in message and "after 2 recovery attempt" in message and "Fix:" in message


def test_oom_inside_decode_halves_the_chunk_and_is_reported(models, short_speech, tmp_path: Path) -> None:
    """decode_stream recovers an OOM in one VAE chunk by itself (halving the chunk): that recovery must reach the
    report's levers and adjustments and the editor's toasts, not only the log."""
    fired: list[int] = []

    def oom_once(module, args) -> None:
        if not fired and args[0].shape[0] > 1:  # a chunk of several latent frames, the first time
            fired.append(args[0].shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (injected in VAE decode)")

    handle = models.vae.decoder.register_forward_pre_hook(oom_once)
    try:
        env, events = environment(models, 64 * GIB)
        report = run_job(models, job(tmp_path, short_speech), env).report
    finally:
        handle.remove()
    assert fired, "the test needs a decode chunk of more than one frame"
    assert report["retries"] == []  # recovered in place, no rerun
    [adjustment] = report["adjustments"]
    assert adjustment["kind"] == "decode_chunk" and adjustment["from"] == fired[0] and adjustment["to"] < fired[0]
    assert adjustment["lever"] in report["levers_applied"]
    assert "oom_recovered" in events



def test_the_compile_levers_outcome_is_a_report_note_not_a_recovery(models, short_speech, tmp_path: Path) -> None:
    """compile_unet under weight streaming (planned for low free memory) is skipped: the report says so in its
    notes, and the host hears no out-of-memory recovery (the editor's toast) for it."""
    from dataclasses import replace as dc_replace

    from sonic_guard.models.compiled_unet import STREAMING_SKIP_NOTE

    env, _ = environment(models, 64 * GIB)
    probe = run_job(models, job(tmp_path, short_speech), env).report
    requested = ExecutionPlan(**{k: v for k, v in probe["plan"].items() if k not in ("levers_applied", "downgrades")})
    levered = dc_replace(requested, cfg_batch=1, ff_chunk=4, decode_chunk=1, offload_idle_models=True,
                         unet_weight_offload=True, overlap_decode=False)
    env, events = environment(models, int(env.estimator.estimate(levered).peak_bytes / 0.9) + 64)
    report = run_job(models, job(tmp_path, short_speech, compile_unet=True), env).report
    unstreamed = dc_replace(levered, unet_weight_offload=False)
    assert env.estimator.estimate(unstreamed).peak_bytes > env.estimator.estimate(levered).peak_bytes + 64 / 0.9
    assert report["plan"]["unet_weight_offload"], "the test needs a plan that streams the UNet's weights"
    assert STREAMING_SKIP_NOTE in report["notes"]
    assert "oom_recovered" not in events
    assert not [a for a in report.get("adjustments", []) if a.get("kind") == "unet_compile"]
