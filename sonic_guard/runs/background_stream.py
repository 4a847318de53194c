"""A stage's item stream produced on its own thread, so the consumer's stage runs beside it.

Used for VAE decode: while the consumer interpolates (RIFE) and hands frames to the encoder thread, the
next frames are decoded. Torch releases the GIL inside its ops, so on the CPU the two stages really run
on two cores; on CUDA the producer enqueues on its own stream, so decode kernels and the consumer's RIFE
kernels and host copies can overlap instead of queueing behind each other on the default stream. The
memory plan budgets both stages' peaks at once while this overlap is on (`ExecutionPlan.overlap_decode`).

A bounded queue keeps host RAM to a few frames. Errors cross back to the consumer with the stage they
left written on them (the OOM recovery reads it), and `close()` stops and joins the producer before the
caller moves its models off the device.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

import torch

from ..telemetry.stage_observer import StageObserver
from ..video.background_writer import drain_queue
from .guarded_run import STAGE_ATTRIBUTE
from .runtime import StageSwitcher, staged

logger = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_QUEUE_ITEMS = 8  # one decode chunk ahead at the official chunk size (~25 MiB of 512^2 float frames)
_POLL_S = 0.1
_END = object()


class BackgroundStream(Generic[T]):
    """Iterate `make_items()` on a worker thread, timed as `stage`; iterate this object to consume."""

    def __init__(self, make_items: Callable[[], Iterable[T]], *, stage: str, observer: StageObserver,
                 device: torch.device, queue_items: int = DEFAULT_QUEUE_ITEMS) -> None:
        if queue_items < 1:
            raise ValueError(f"queue_items must be >= 1, got {queue_items}")
        self.stage = stage
        self._make_items = make_items
        self._observer = observer
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_items)
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._cuda_stream = _side_stream(device)
        self._thread = threading.Thread(target=self._produce, name=f"sonic-{stage}", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self._thread.is_alive() or not self._queue.empty():
                    continue
                item = _END  # the producer is gone without a last word (cannot happen short of a crash)
            if item is _END:
                self._thread.join()
                if self._error is not None:
                    raise self._error
                return
            yield item  # type: ignore[misc]

    def close(self) -> None:
        """Stop the producer (it finishes the item it is on), drop queued items and wait for the thread."""
        self._stopping.set()
        while self._thread.is_alive():
            drain_queue(self._queue)
            self._thread.join(timeout=_POLL_S)
        drain_queue(self._queue)

    def _produce(self) -> None:
        switcher = StageSwitcher(self._observer)
        items: Iterator[T] | None = None
        try:
            with torch.cuda.stream(self._cuda_stream) if self._cuda_stream is not None else contextlib.nullcontext():
                items = staged(switcher, self.stage, self._make_items())
                for item in items:
                    if not self._put(item):
                        return
                if self._cuda_stream is not None:
                    self._cuda_stream.synchronize()
        except BaseException as error:  # handed to the consumer's thread, which raises it
            if getattr(error, STAGE_ATTRIBUTE, None) is None:
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(error, STAGE_ATTRIBUTE, self.stage)
            self._error = error
        finally:
            if items is not None:
                items.close()  # the producing generators run their cleanup on this thread
            switcher.close()
            self._put(_END)

    def _put(self, item: object) -> bool:
        """Queue `item` unless the consumer has closed the stream; False when it has."""
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False



def _side_stream(device: torch.device) -> torch.cuda.Stream | None:
    """A CUDA stream for the producer that first waits for the work already queued (the models' copies)."""
    if device.type != "cuda":
        return None
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    return stream
