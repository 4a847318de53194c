"""smooth_motion: identity at 0, constant state, no delay of the motion, same frame count."""

from __future__ import annotations

import pytest
import torch

from sonic_guard.errors import BadInputError
from sonic_guard.video.smoothing import MotionSmoother, smooth_motion


def _moving_dot(count: int, size: int = 16) -> list[torch.Tensor]:
    frames = []
    for index in range(count):
        frame = torch.zeros(3, size, size)
        frame[:, size // 2, index % size] = 1.0
        frames.append(frame)
    return frames


def test_strength_zero_is_identity() -> None:
    frames = _moving_dot(10)
    out = list(smooth_motion(iter(frames), 0.0))
    assert len(out) == 10 and all(a is b for a, b in zip(out, frames))


@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_same_count_still_frames_untouched_and_jitter_reduced(strength: float) -> None:
    still = [torch.full((3, 4, 4), 0.4) for _ in range(6)]
    out = list(smooth_motion(iter(still), strength))
    assert len(out) == 6 and all(torch.allclose(frame, still[0]) for frame in out)
    jitter = [torch.full((3, 4, 4), 0.5 + (0.2 if index % 2 else -0.2)) for index in range(20)]
    smoothed = list(smooth_motion(iter(jitter), strength))
    before = torch.stack(jitter)[1:-1].std()
    after = torch.stack(smoothed)[1:-1].std()
    assert after < before * (1 - strength * 0.6)


def test_centred_window_adds_no_delay() -> None:
    # A dot moving one pixel per frame: the smoothed frame's centre of mass stays on the dot.
    frames = _moving_dot(12)
    columns = torch.arange(16, dtype=torch.float32)
    for index, frame in enumerate(smooth_motion(iter(frames), 1.0)):
        if 0 < index < 11:
            weights = frame[0].sum(dim=0)
            assert abs(float((weights * columns).sum() / weights.sum()) - index) < 1e-5


def test_state_stays_two_frames_after_a_thousand() -> None:
    smoother = MotionSmoother(0.5)
    sizes = []
    for index, frame in enumerate(_moving_dot(1000, size=8)):
        smoother.push(frame)
        if index in (10, 999):
            held = smoother.held_frames
            sizes.append((len(held), sum(t.numel() * t.element_size() for t in held)))
    assert sizes[0] == sizes[1] == (2, 2 * 3 * 8 * 8 * 4)
    assert len(vars(smoother)) == 3  # weight, previous, current: nothing that could grow
    assert smoother.flush() is not None and smoother.held_frames == ()


def test_rejects_strength_outside_zero_to_one() -> None:
    with pytest.raises(BadInputError, match="smooth_motion"):
        MotionSmoother(1.5)
