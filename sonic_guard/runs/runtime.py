"""How the engine talks to whoever runs it: progress, cancellation, stage timing, and model placement.

The engine never imports ComfyUI. The ComfyUI glue passes hooks that tick a ProgressBar, raise on Cancel,
time stages into the metrics, and place models through ComfyUI's model management; outside ComfyUI the
defaults below do the plain thing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from ..models.weight_streaming import stream_weights
from ..telemetry.stage_observer import StageObserver

T = TypeVar("T")
# Something the run changed while running, to fit memory: kind ("evicted", "decode_chunk") and details, among
# them "lever", the line the report lists. The job collects these into the report, the metrics and the toasts.
OnAdjustment = Callable[[str, dict[str, Any]], None]


class ModelPlacer(Protocol):
    def place(self, name: str, module: nn.Module) -> contextlib.AbstractContextManager[nn.Module]: ...


@dataclass
class StageClock:
    """Records wall time per stage for the run report (the default observer)."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass
class DevicePlacer:
    """Moves a model to the compute device for a stage; with `offload_idle`, moves it back to the CPU after.

    Keeping idle models off the device is one of the memory planner's quality-neutral levers.
    """

    device: torch.device
    offload_idle: bool = True
    stream_unet: bool = False  # the planner's UNet weight offload lever

    @contextlib.contextmanager
    def place(self, name: str, module: nn.Module) -> Iterator[nn.Module]:
        if name == "unet" and self.stream_unet:
            with stream_weights(module, self.device):
                yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            if self.offload_idle and self.device.type != "cpu":
                module.to("cpu")


@dataclass
class RunHooks:
    """Callbacks the engine calls at chunk boundaries. Any of them may raise to stop the run."""

    progress: Callable[[int, int], None] = lambda done, total: None
    check_cancel: Callable[[], None] = lambda: None
    observer: StageObserver = field(default_factory=lambda: StageClock())
    on_adjustment: OnAdjustment = lambda kind, details: None
    # where compile_unet keeps its compiled artifacts (the run history's folder); None: inductor's own cache only
    compile_cache_dir: Path | None = None


class StageSwitcher:
    """Exactly one stage open at a time, for streamed stages that interleave (decode, interpolate, encode).

    Nested context managers would count decode time inside interpolation (and tag its profile samples so);
    switching closes the current stage before the next one opens, so each stage gets only its own time.
    """

    def __init__(self, observer: StageObserver) -> None:
        self._observer = observer
        self._current: str | None = None
        self._context: contextlib.AbstractContextManager[None] | None = None

    def switch(self, stage: str | None) -> str | None:
        """Open `stage` (None closes all) and return the stage that was open."""
        previous = self._current
        if stage != previous:
            if self._context is not None:
                self._context.__exit__(None, None, None)
            self._context = self._observer.stage(stage) if stage is not None else None
            if self._context is not None:
                self._context.__enter__()
            self._current = stage
        return previous

    def close(self) -> None:
        self.switch(None)


def staged(switcher: StageSwitcher, stage: str | None, items: Iterable[T]) -> Iterator[T]:
    """Yield from `items`, attributing the time spent producing each item to `stage` alone (None: to no stage,
    for waiting on items another thread produces and times)."""
    iterator = iter(items)
    while True:
        previous = switcher.switch(stage)
        try:
            item = next(iterator)
        except StopIteration:
            return
        finally:
            switcher.switch(previous)
        yield item
