"""smooth_motion: a 3-tap temporal filter over the frame stream that keeps two frames, never more.

out[t] = w*x[t-1] + (1-2w)*x[t] + w*x[t+1], with w = strength/3 (strength 1 = equal weights, a box filter).
The window is centred, so smoothing adds no delay to the motion (an EMA would lag the lips behind the audio
by about w/(1-w) frames); the cost is that each frame leaves the filter one frame later in the stream.
The first and last frames reuse themselves for the missing neighbour.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ..errors import BadInputError


class MotionSmoother:
    """Push frames in order, get smoothed frames out one step behind; `flush()` returns the last one."""

    def __init__(self, strength: float) -> None:
        if not 0.0 <= strength <= 1.0:
            raise BadInputError(
                problem=f"smooth_motion strength is {strength}",
                expected="a value from 0 (off) to 1 (strongest)",
                fix="set smooth_motion between 0 and 1",
            )
        self.side_weight = strength / 3.0
        self._previous: torch.Tensor | None = None
        self._current: torch.Tensor | None = None

    @property
    def held_frames(self) -> tuple[torch.Tensor, ...]:
        """The frames the filter holds right now (at most two)."""
        return tuple(frame for frame in (self._previous, self._current) if frame is not None)

    def push(self, frame: torch.Tensor) -> torch.Tensor | None:
        """Take frame t, return smoothed frame t-1 (None for the very first frame)."""
        if self.side_weight == 0.0:
            return frame
        if self._current is None:
            self._current = frame
            return None
        before = self._previous if self._previous is not None else self._current
        out = self._filter(before, self._current, frame)
        self._previous, self._current = self._current, frame
        return out

    def flush(self) -> torch.Tensor | None:
        """Smoothed last frame (its missing right neighbour is itself); the filter is then empty."""
        if self._current is None:
            return None
        before = self._previous if self._previous is not None else self._current
        out = self._filter(before, self._current, self._current)
        self._previous = self._current = None
        return out

    def _filter(self, before: torch.Tensor, current: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        w = self.side_weight
        return (current * (1.0 - 2.0 * w)).add_(before, alpha=w).add_(after, alpha=w)


def smooth_motion(frames: Iterable[torch.Tensor], strength: float) -> Iterator[torch.Tensor]:
    """Stream transform: the same number of frames out as in; strength 0 yields the input frames unchanged."""
    smoother = MotionSmoother(strength)
    for frame in frames:
        out = smoother.push(frame)
        if out is not None:
            yield out
    last = smoother.flush()
    if last is not None and smoother.side_weight > 0.0:
        yield last
