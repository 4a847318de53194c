"""The video writer on its own thread, so encoding overlaps decode and interpolation instead of following them.

`write()` hands the frame to a bounded queue and returns; a worker thread converts it to uint8 and encodes it
(libx264 and the AAC encoder run in C with the GIL released). The queue bounds host RAM to a few frames, and
when the encoder is the slowest stage the producer simply waits on it. Encoding time is reported as the
"encode" stage from the worker thread (so its profile samples carry the tag there) and overlaps the producer's
stages in wall time.

Errors cross back: whatever the worker raises (a full disk) is raised by the next `write()` or by `close()`.
Leaving the `with` block with an exception (a cancel, an error upstream) aborts: the worker stops and the
half-written file is removed.
"""

from __future__ import annotations

import logging
import queue
import threading
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from ..telemetry.stage_observer import StageObserver
from .writer import ClosedOrAborted, StreamingVideoWriter, VideoFileInfo

logger = logging.getLogger(__name__)

DEFAULT_QUEUE_FRAMES = 8  # ~25 MiB of float frames at 512x512: enough to ride out a slow frame
_POLL_S = 0.1
_STOP = object()


class BackgroundVideoWriter(ClosedOrAborted):
    """A `StreamingVideoWriter` driven from a worker thread, with its interface (write / close / abort / with)."""

    def __init__(self, writer: StreamingVideoWriter, *, observer: StageObserver | None = None,
                 queue_frames: int = DEFAULT_QUEUE_FRAMES) -> None:
        """Encode through `writer` (opened by the caller, in its thread: a bad path or a full disk fails there)."""
        if queue_frames < 1:
            writer.abort()
            raise ValueError(f"queue_frames must be >= 1, got {queue_frames}")
        self._writer = writer
        self.path = self._writer.path
        self._observer = observer
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_frames)
        self._error: BaseException | None = None
        self._stopping = threading.Event()
        self._info: VideoFileInfo | None = None
        self._thread = threading.Thread(target=self._encode_frames, name="sonic-video-encoder", daemon=True)
        self._thread.start()

    @property
    def frames_written(self) -> int:
        return self._writer.frames_written

    def write(self, frame: np.ndarray | torch.Tensor) -> None:
        """Queue one frame (uint8 HxWx3, or float [3,H,W] in [0,1]; not modified afterwards by the caller)."""
        self._raise_worker_error()
        if self._info is not None or self._stopping.is_set():
            raise ValueError(f"{self.path} is already closed")
        while True:
            self._raise_worker_error()
            try:
                self._queue.put(frame, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def close(self) -> VideoFileInfo:
        """Wait for every queued frame, flush both encoders and close the file (raises what the worker raised)."""
        if self._info is not None:
            return self._info
        self._finish_worker()
        self._raise_worker_error()
        with self._stage():
            self._info = self._writer.close()
        return self._info

    def abort(self) -> None:
        """Stop the worker, drop queued frames and remove the file."""
        self._stopping.set()
        self._drain()
        self._finish_worker()
        self._writer.abort()

    def _encode_frames(self) -> None:
        try:
            while not self._stopping.is_set():
                frame = self._queue.get()
                if frame is _STOP:
                    return
                with self._stage():
                    self._writer.write(frame)
        except BaseException as error:  # handed to the producer's thread, which raises it
            self._error = error
            self._stopping.set()
            self._drain()

    def _finish_worker(self) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=_POLL_S)
                break
            except queue.Full:  # the worker is still encoding queued frames
                continue
        self._thread.join()

    def _drain(self) -> None:
        drain_queue(self._queue)

    def _raise_worker_error(self) -> None:
        if self._error is not None:  # the file is removed; every later call raises the same error
            self._writer.abort()
            raise self._error

    def _stage(self) -> Any:
        return self._observer.stage("encode") if self._observer is not None else nullcontext()


def drain_queue(items: queue.Queue[Any]) -> None:
    """Drop whatever is queued (a stopped worker's or consumer's leftovers), without blocking."""
    while True:
        try:
            items.get_nowait()
        except queue.Empty:
            return
