"""Decode beside interpolation (`ExecutionPlan.overlap_decode`): the same video as decoding first, decode really on
its own thread, its errors and cancels crossing back with their stage, nothing left running; and the memory plan
budgets both stages at once while they overlap, turning the overlap off when that is what does not fit."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import portrait_rgb
from test_job_recovery import InjectOom, environment, job, models, short_speech  # noqa: F401 - fixtures

from sonic_guard.conditioning.reference_image import prepare_reference
from sonic_guard.face.choose_detector import make_face_detector
from sonic_guard.job import run_job
from sonic_guard.memory.estimator import OVERLAPPED_STAGE, MemoryEstimator
from sonic_guard.memory.plan import ExecutionPlan, RunRequest
from sonic_guard.memory.planner import plan_run
from sonic_guard.memory.recovery import next_rung_after_oom
from sonic_guard.models.configs import ModelConfigs
from sonic_guard.runs.background_stream import BackgroundStream
from sonic_guard.runs.guarded_run import STAGE_ATTRIBUTE
from sonic_guard.runs.pipeline import generate
from sonic_guard.runs.runtime import RunHooks, StageClock, StageSwitcher, staged
from sonic_guard.settings import GenerationSettings

GIB = 2**30
DECODE_THREAD = "sonic-decode"


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == DECODE_THREAD]


class ThreadsPerStage:
    """A stage observer that notes which threads opened each stage."""

    def __init__(self) -> None:
        self.clock = StageClock()
        self.threads: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        with self._lock:
            self.threads.setdefault(name, set()).add(threading.current_thread().name)
            timer = self.clock.stage(name)
        with timer:
            yield

    def stage_seconds(self) -> dict[str, float]:
        return dict(self.clock.seconds)


class Cancelled(Exception):
    """What the host raises to stop a run (ComfyUI raises its InterruptProcessingException)."""


class CancelInDecode:
    """Raises the host's cancel the `nth` time decode asks whether to go on (after frames reached the writer)."""

    def __init__(self, nth: int) -> None:
        self.nth, self.calls = nth, 0

    def __call__(self) -> None:
        if threading.current_thread().name == DECODE_THREAD:
            self.calls += 1
            if self.calls == self.nth:
                raise Cancelled("cancelled by the user")


@pytest.fixture(scope="module")
def reference(models):  # noqa: F811
    return prepare_reference(portrait_rgb(), min_resolution=128, crop=False,
                             detector=make_face_detector(models.face_detector_path))


def _generate(models, reference, audio, tmp_path: Path, *, overlap: bool, hooks: RunHooks | None = None,  # noqa: F811
              name: str = "out.mp4"):
    mode = "rife" if models.rife is not None else "blend"
    settings = GenerationSettings(min_resolution=128, inference_steps=1, interpolation=mode, crop_face=False)
    height, width = reference.reference.shape[-2:]
    plan = ExecutionPlan(min_resolution=128, width=int(width), height=int(height), inference_steps=1,
                         dtype="float32", decode_chunk=2, overlap_decode=overlap)
    return generate(models, reference, audio, settings, plan, tmp_path / name, device=torch.device("cpu"),
                    hooks=hooks or RunHooks(), collect_frames=True)


def test_overlapped_decode_gives_the_same_video_and_runs_on_its_own_thread(models, reference, short_speech,  # noqa: F811
                                                                           tmp_path: Path) -> None:
    serial = _generate(models, reference, short_speech, tmp_path, overlap=False, name="serial.mp4")
    observer = ThreadsPerStage()
    overlapped = _generate(models, reference, short_speech, tmp_path, overlap=True, name="overlap.mp4",
                           hooks=RunHooks(observer=observer))
    assert serial.frames is not None and overlapped.frames is not None
    # The same ops on the same inputs, only on another thread: the frames agree bit for bit.
    assert torch.equal(serial.frames, overlapped.frames)
    assert overlapped.video.frames == serial.video.frames > 0
    main = threading.current_thread().name
    assert observer.threads["decode"] == {DECODE_THREAD}
    assert main in observer.threads["interpolation"] and DECODE_THREAD not in observer.threads["interpolation"]
    assert overlapped.stage_seconds["decode"] > 0
    assert _decode_threads() == []


def test_a_cancel_inside_overlapped_decode_stops_everything_and_leaves_no_file(  # noqa: F811
        models, reference, short_speech, tmp_path: Path) -> None:  # noqa: F811
    cancel = CancelInDecode(nth=2)
    with pytest.raises(Cancelled) as raised:
        _generate(models, reference, short_speech, tmp_path, overlap=True, hooks=RunHooks(check_cancel=cancel))
    assert cancel.calls == 2
    assert getattr(raised.value, STAGE_ATTRIBUTE) == "decode"
    assert _decode_threads() == []
    assert list(tmp_path.iterdir()) == [], "the cancelled run left files behind"


def test_an_oom_in_overlapped_decode_is_recovered_as_a_decode_oom(models, short_speech, tmp_path: Path) -> None:  # noqa: F811
    observer = InjectOom("decode")
    env, events = environment(models, 64 * GIB, observer)
    outcome = run_job(models, job(tmp_path, short_speech, interpolation="blend"), env)
    assert observer.fired and outcome.report["plan"]["overlap_decode"] is True
    retry = outcome.report["retries"][0]
    assert retry["stage"] == "decode", "the OOM raised on the decode thread was attributed elsewhere"
    assert "oom_recovered" in events and outcome.result.video.frames > 0
    assert _decode_threads() == []


def test_background_stream_hands_over_items_errors_and_stops_when_closed() -> None:
    produced: list[int] = []
    cleaned = threading.Event()

    def numbers() -> Iterator[int]:
        try:
            for n in range(1000):
                produced.append(n)
                yield n
        finally:
            cleaned.set()

    stream = BackgroundStream(numbers, stage="decode", observer=StageClock(), device=torch.device("cpu"),
                              queue_items=2)
    taken = []
    for item in stream:
        taken.append(item)
        if len(taken) == 5:
            break
    stream.close()
    assert taken == [0, 1, 2, 3, 4]
    assert cleaned.is_set(), "the producing generator's cleanup did not run"
    assert len(produced) <= 5 + 2 + 2, "the producer ran far ahead of a bounded queue"
    assert _decode_threads() == []

    def failing() -> Iterator[int]:
        yield 1
        raise torch.OutOfMemoryError("out of memory (raised by the test)")

    stream = BackgroundStream(failing, stage="decode", observer=StageClock(), device=torch.device("cpu"))
    with pytest.raises(torch.OutOfMemoryError) as raised:
        list(stream)
    assert getattr(raised.value, STAGE_ATTRIBUTE) == "decode"
    stream.close()


def test_waiting_for_the_background_stage_is_not_the_consumers_stage_time() -> None:
    """Time the consumer spends waiting for decoded frames is decode's (timed on its thread), not interpolation's."""
    clock = StageClock()

    def slow() -> Iterator[int]:
        for n in range(10):
            time.sleep(0.05)
            yield n

    stream = BackgroundStream(slow, stage="decode", observer=clock, device=torch.device("cpu"))
    switcher = StageSwitcher(clock)
    try:
        assert list(staged(switcher, "interpolation", staged(switcher, None, stream))) == list(range(10))
    finally:
        switcher.close()
        stream.close()
    assert clock.seconds["decode"] >= 0.45
    assert clock.seconds.get("interpolation", 0.0) < 0.1 * clock.seconds["decode"]


def test_the_estimate_counts_decode_and_interpolation_at_once_only_while_they_overlap() -> None:
    estimator = MemoryEstimator(ModelConfigs.full_size())
    plan = ExecutionPlan(width=512, height=512, offload_idle_models=True)
    overlapped = estimator.estimate(plan, exact=True)
    stage = overlapped.stages[OVERLAPPED_STAGE]
    decode, interpolate = overlapped.stages["vae_decode"], overlapped.stages["interpolate"]
    assert stage.activation_bytes == decode.activation_bytes + interpolate.activation_bytes
    assert set(stage.models) == {"vae", "rife"}
    assert stage.weights_bytes == decode.weights_bytes + interpolate.weights_bytes
    serial = estimator.estimate(replace(plan, overlap_decode=False), exact=True)
    assert OVERLAPPED_STAGE not in serial.stages
    assert serial.stages["vae_decode"].peak_bytes == decode.peak_bytes
    no_interpolation = estimator.estimate(replace(plan, interpolate=False), exact=True)
    assert OVERLAPPED_STAGE not in no_interpolation.stages


class PostSamplingDominates:
    """An estimator whose UNet window is small, so decode beside interpolation is the peak: the planner's own
    figures for the other stages (real simulations), the UNet window replaced."""

    def __init__(self) -> None:
        self.inner = MemoryEstimator(ModelConfigs.full_size())

    def estimate(self, plan: ExecutionPlan, free_bytes: int | None = None, *, exact: bool | None = None):
        estimate = self.inner.estimate(plan, free_bytes, exact=exact)
        estimate.stages["unet_window"].activation_bytes = 0
        return estimate


def test_the_planner_turns_the_overlap_off_when_it_is_what_does_not_fit() -> None:
    estimator = PostSamplingDominates()
    request = RunRequest(min_resolution=512, decode_chunk=1, attention="flash")
    requested = estimator.estimate(request.requested_plan(), exact=True)
    assert requested.dominant_stage == OVERLAPPED_STAGE
    serial = estimator.estimate(replace(request.requested_plan(), overlap_decode=False), exact=True)
    # Free memory between the two peaks (the 10 % safety margin included): only the serial plan fits.
    free = int((serial.peak_bytes + requested.peak_bytes) / 2 / 0.9)
    decision = plan_run(request, free, estimator)
    assert decision.plan.overlap_decode is False
    assert "overlap_decode: on→off" in decision.plan.levers_applied
    assert decision.plan.min_resolution == 512, "the resolution went down although the serial plan fits"


def test_an_oom_in_interpolation_beside_decode_first_turns_the_overlap_off() -> None:
    rung = next_rung_after_oom(ExecutionPlan(), "interpolate")
    assert rung is not None and rung.overlap_decode is False
    assert rung.levers_applied[-1] == "overlap_decode: on→off (after OOM in interpolate)"
