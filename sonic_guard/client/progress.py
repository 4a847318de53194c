"""A plain text progress bar on stderr (no terminal library needed)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .events import ProgressEvent

BAR_WIDTH = 30


class TextProgress:
    """Draws `label [#####.....] 12/25 node 4 (SonicGuardGenerate) 00:42` on one line, redrawn in place.

    On a terminal the line is rewritten with a carriage return; elsewhere (logs, CI) a line is written only when
    the percentage moves by 10 points or the node changes, so logs stay short.
    """

    def __init__(self, label: str, node_types: dict[str, str] | None = None, stream: TextIO | None = None,
                 redraw: bool | None = None) -> None:
        self.label = label
        self.node_types = node_types or {}
        self.stream = stream if stream is not None else sys.stderr
        # Redrawing in place only works for one bar on a terminal; parallel jobs pass redraw=False.
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)()) if redraw is None else redraw
        self.started = time.monotonic()
        self.node = ""
        self.value = 0
        self.maximum = 0
        self._last_logged: tuple[str, int] = ("", -1)
        self._dirty = False

    def __call__(self, event: ProgressEvent | None, node_started: str | None) -> None:
        if node_started is not None:
            self.node, self.value, self.maximum = node_started, 0, 0
        if event is not None:
            self.node, self.value, self.maximum = event.node_id, event.value, event.maximum
        self._draw()

    def line(self) -> str:
        elapsed = int(time.monotonic() - self.started)
        node = f"node {self.node} ({self.node_types.get(self.node, '?')})" if self.node else "queued"
        if self.maximum > 0:
            done = min(BAR_WIDTH, BAR_WIDTH * self.value // self.maximum)
            bar = f"[{'#' * done}{'.' * (BAR_WIDTH - done)}] {self.value}/{self.maximum}"
        else:
            bar = f"[{'.' * BAR_WIDTH}]"
        return f"{self.label} {bar} {node} {elapsed // 60:02d}:{elapsed % 60:02d}"

    def _draw(self) -> None:
        if self.interactive:
            self.stream.write("\r\x1b[K" + self.line())
            self.stream.flush()
            self._dirty = True
            return
        percent = 100 * self.value // self.maximum if self.maximum else 0
        key = (self.node, percent // 10)
        if key != self._last_logged:
            self._last_logged = key
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def finish(self, text: str) -> None:
        """End the bar's line with a final word (done, failed, ...)."""
        if self.interactive and self._dirty:
            self.stream.write("\r\x1b[K")
        self.stream.write(f"{self.label} {text}\n")
        self.stream.flush()
