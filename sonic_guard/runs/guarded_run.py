"""Run a generation under the memory guard: execute the plan, and when the device still runs out of memory,
free, take the planner's next rung and try again, a bounded number of times.

The planner (`memory.planner`) decides every rung; this module only executes and records. The retry happens
*after* the `except` block: a live exception keeps the failed attempt's frames, and with them its tensors,
referenced, so recovering inside the handler would retry with the old attempt's memory still held.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..errors import OutOfMemoryAfterRetriesError
from ..memory.plan import ExecutionPlan
from .runtime import StageObserver

logger = logging.getLogger(__name__)
R = TypeVar("R")

DEFAULT_MAX_RETRIES = 3


@dataclass
class OomRetry:
    stage: str
    message: str
    from_plan: dict
    to_plan: dict
    levers: list[str]


@dataclass
class GuardedOutcome(Generic[R]):
    result: R
    plan: ExecutionPlan
    retries: list[OomRetry] = field(default_factory=list)
    seconds: float = 0.0


STAGE_ATTRIBUTE = "sonic_stage"  # set on an error by the stage it left, so it crosses threads with the error


class CurrentStage:
    """Wraps a stage observer and remembers which stage is running, to say where an OOM happened.

    Stages run on more than one thread (the encoder has its own), so the stage an error left is written on the
    error itself; `name` (the last stage opened anywhere) is only the fallback.
    """

    def __init__(self, inner: StageObserver) -> None:
        self.inner = inner
        self.name = "preprocess"

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.name = name
        try:
            with self.inner.stage(name):
                yield
        except BaseException as error:
            if getattr(error, STAGE_ATTRIBUTE, None) is None:
                with contextlib.suppress(AttributeError, TypeError):  # a few built-in errors take no attributes
                    setattr(error, STAGE_ATTRIBUTE, name)
            raise

    def stage_of(self, error: BaseException) -> str:
        return str(getattr(error, STAGE_ATTRIBUTE, None) or self.name)

    def __getattr__(self, attribute: str):  # stage_seconds() and friends of the wrapped observer
        return getattr(self.inner, attribute)


def run_with_oom_recovery(
    plan: ExecutionPlan,
    attempt: Callable[[ExecutionPlan, CurrentStage], R],
    *,
    observer: StageObserver,
    next_rung: Callable[[ExecutionPlan, str], ExecutionPlan | None],
    is_oom: Callable[[BaseException], bool],
    release_memory: Callable[[], None],
    on_retry: Callable[[OomRetry], None] = lambda retry: None,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> GuardedOutcome[R]:
    """Call `attempt(plan, stage_tracker)`; on an OOM, release memory and retry with `next_rung(plan, stage)`."""
    retries: list[OomRetry] = []
    start = time.perf_counter()
    while True:
        tracker = CurrentStage(observer)
        failure: tuple[str, str] | None = None
        try:
            result = attempt(plan, tracker)
        except BaseException as error:  # noqa: BLE001 - only OOMs are handled; everything else re-raises
            if not is_oom(error):
                raise
            failure = (tracker.stage_of(error), _short(error))
        if failure is None:
            return GuardedOutcome(result, plan, retries, time.perf_counter() - start)

        # Outside the handler now: the failed attempt's frames are gone, so its tensors can be freed.
        stage, message = failure
        gc.collect()
        release_memory()
        rung = next_rung(plan, stage) if len(retries) < max_retries else None
        if rung is None:
            tried = "; ".join(f"{r.stage}: {', '.join(r.levers) or 'no lever'}" for r in retries) or "none"
            raise OutOfMemoryAfterRetriesError(
                problem=(
                    f"the device ran out of memory in stage '{stage}' after {len(retries)} recovery attempt(s) "
                    f"(rungs tried: {tried}); last error: {message}"
                ),
                expected="a plan that fits the memory that is free while the run executes",
                fix=(
                    "free GPU memory (close other programs or unload other models), lower min_resolution, "
                    "or use the 'minimal' preset; the Sonic Plan node shows what fits"
                ),
            )
        retry = OomRetry(stage, message, plan.to_dict(), rung.to_dict(), _new_levers(plan, rung))
        retries.append(retry)
        logger.warning("out of memory in %s; retrying with %s", stage, ", ".join(retry.levers) or "next rung")
        on_retry(retry)
        plan = rung


def _new_levers(before: ExecutionPlan, after: ExecutionPlan) -> list[str]:
    old = set(before.levers_applied)
    changes = [lever for lever in after.levers_applied if lever not in old]
    changes += [d for d in after.downgrades if d not in set(before.downgrades)]
    return changes


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:240]
