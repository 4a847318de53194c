"""A run cancelled while its video is being encoded leaves no file behind (before the writers aborted, a cancel
finalised a short mp4 that looked finished), no encoder thread, and the next run with the same output works."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_job_recovery import environment, job, models, short_speech  # noqa: F401 - fixtures

from sonic_guard.job import run_job
from sonic_guard.runs.runtime import StageClock

GIB = 2**30


class Cancelled(Exception):
    """What the host raises to stop a run (ComfyUI raises its InterruptProcessingException)."""


class CancelDuringEncoding:
    """A stage observer that cancels the run the `nth` time the decode stage opens: frames already decoded are in
    the writer by then (the streamed stages switch once per frame; with interpolation, decode runs on a thread of
    its own and the cancel crosses back from there)."""

    def __init__(self, nth: int = 3) -> None:
        self.nth, self.decodes, self.fired = nth, 0, False
        self.clock = StageClock()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name == "decode" and not self.fired:  # on the decode thread when decode runs beside interpolation
            self.decodes += 1
            if self.decodes == self.nth:
                self.fired = True
                raise Cancelled("cancelled by the user")
        with self.clock.stage(name):
            yield

    def stage_seconds(self) -> dict[str, float]:
        return self.clock.seconds


@pytest.mark.parametrize("interpolation", ["none", "blend"])
def test_a_cancel_during_encoding_leaves_no_file_and_the_next_run_works(models, short_speech,  # noqa: F811
                                                                          tmp_path: Path, interpolation: str) -> None:
    request = job(tmp_path, short_speech, interpolation=interpolation)
    observer = CancelDuringEncoding()
    env, _ = environment(models, 64 * GIB, observer)
    with pytest.raises(Cancelled):
        run_job(models, request, env)
    assert observer.fired
    assert list(tmp_path.iterdir()) == [], "the cancelled run left files behind"
    assert [t for t in threading.enumerate() if t.name == "sonic-video-encoder"] == []

    outcome = run_job(models, request, env)  # the cancel fired once; the same request now runs through
    assert outcome.result.video.path == request.output_path and outcome.result.video.frames > 0
