"""Stage names and the observer the engine calls around each stage.

The engine only knows `StageObserver.stage(name)`; with telemetry absent it gets `NullStageObserver`, which
does nothing. The real observer (`RunObserver` in `hub.py`) times stages and applies profiling tags.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from enum import Enum
from typing import Protocol, runtime_checkable


class Stage(str, Enum):
    """The Sonic data path, in order. A fixed set: these are metric and profiling label values."""

    PREPROCESS = "preprocess"
    AUDIO_FEATURES = "audio_features"
    SAMPLING = "sampling"
    DECODE = "decode"
    INTERPOLATION = "interpolation"
    ENCODE = "encode"


STAGE_NAMES: tuple[str, ...] = tuple(s.value for s in Stage)


def parse_stage(name: str | Stage) -> Stage:
    """The `Stage` for a name; a name outside the fixed set raises ValueError."""
    if isinstance(name, Stage):
        return name
    try:
        return Stage(name)
    except ValueError:
        # A programming error in the engine, not a user's: reported as such (reason "internal").
        raise ValueError(f"unknown stage name {name!r}; expected one of {', '.join(STAGE_NAMES)}") from None


@runtime_checkable
class StageObserver(Protocol):
    """What the engine accepts: `with observer.stage("sampling"): ...`."""

    def stage(self, name: str | Stage) -> AbstractContextManager[None]: ...


class NullStageObserver:
    """The observer used when telemetry is absent: validates the name and does nothing else."""

    def stage(self, name: str | Stage) -> AbstractContextManager[None]:
        parse_stage(name)
        return nullcontext()


class StageRecorder:
    """Wall time per stage for one run, in the order stages ran; repeated stages add up.

    Thread-safe because a run may be observed from the prompt thread while the glue reads the report.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}

    @contextmanager
    def timed(self, stage: Stage) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def add(self, stage: Stage, seconds: float) -> None:
        with self._lock:
            self._seconds[stage.value] = self._seconds.get(stage.value, 0.0) + seconds

    def seconds(self) -> dict[str, float]:
        """Stage name -> total seconds so far (a copy)."""
        with self._lock:
            return dict(self._seconds)
