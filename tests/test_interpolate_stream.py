"""interpolate_stream: order, count, laziness, fallbacks and padding to the audio length."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

import pytest
import torch

from sonic_guard.errors import BadInputError
from sonic_guard.models.rife import IFNet
from sonic_guard.video.interpolate import (
    choose_mode,
    frames_for_duration,
    interpolate_stream,
    output_fps,
    output_frame_count,
    pad_to_frame_count,
)


def _frames(count: int, size: int = 8) -> list[torch.Tensor]:
    return [torch.full((3, size, size), index / max(count - 1, 1)) for index in range(count)]


def average(img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
    assert img0.shape[0] == 1 and img0.ndim == 4  # the IFNet calling convention
    return (img0 + img1) / 2


@pytest.mark.parametrize("mode", ["rife", "blend"])
def test_midpoints_are_interleaved_between_every_pair(mode: str) -> None:
    frames = _frames(5)
    out = list(interpolate_stream(iter(frames), mode, average if mode == "rife" else None))
    assert len(out) == 2 * 5 - 1 == output_frame_count(5, mode)
    for index, frame in enumerate(out):
        if index % 2 == 0:
            assert frame is frames[index // 2]
        else:
            torch.testing.assert_close(frame, (frames[index // 2] + frames[index // 2 + 1]) / 2)
        assert frame.shape == (3, 8, 8) and frame.dtype == torch.float32


def test_midpoint_output_is_clamped_like_the_official_code() -> None:
    def overshoot(img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        return img0 + img1 + 0.7

    out = list(interpolate_stream(iter(_frames(2)), "rife", overshoot))
    assert out[1].max() == 1.0


def test_none_is_passthrough_at_12_5_fps() -> None:
    frames = _frames(4)
    assert list(interpolate_stream(iter(frames), "none")) == frames
    assert output_fps("none") == Fraction(25, 2)
    assert output_fps("rife") == output_fps("blend") == Fraction(25)
    assert output_frame_count(4, "none") == 4 and output_frame_count(0, "rife") == 0


def test_stream_pulls_input_lazily_holding_one_frame() -> None:
    pulled: list[int] = []

    def source() -> Iterator[torch.Tensor]:
        for index, frame in enumerate(_frames(100)):
            pulled.append(index)
            yield frame

    stream = interpolate_stream(source(), "blend")
    for _ in range(5):  # f0, m01, f1, m12, f2
        next(stream)
    assert len(pulled) == 3
    assert len(list(stream)) == 2 * 100 - 1 - 5


def test_missing_rife_weights_fall_back_to_the_users_choice(caplog: pytest.LogCaptureFixture) -> None:
    choice = choose_mode("rife", None, fallback="none")
    assert choice.mode == "none" and "RIFE" in choice.note and "12.5" in choice.note
    assert "RIFE" in caplog.text
    assert choose_mode("rife", None, fallback="blend").mode == "blend"
    assert choose_mode("rife", average).mode == "rife" and choose_mode("rife", average).note == ""
    with pytest.raises(BadInputError, match="flownet"):
        choose_mode("rife", None, fallback="rife")
    with pytest.raises(BadInputError, match="interpolation mode"):
        choose_mode("warp", average)
    with pytest.raises(ValueError):
        next(interpolate_stream(iter(_frames(2)), "rife", None))


def test_padding_makes_the_video_as_long_as_the_audio() -> None:
    # 3.19 s of audio -> 79 frames at 25 fps generated (N = 39), 2N-1 = 77 interpolated frames.
    audio_s = 3.19
    generated = int(audio_s * 25) // 2
    target = frames_for_duration(audio_s, output_fps("blend"))
    frames = list(pad_to_frame_count(interpolate_stream(iter(_frames(generated)), "blend"), target))
    assert len(frames) == target == 80
    assert abs(len(frames) / 25 - audio_s) <= 1 / 25
    assert frames[-1] is frames[-2] is frames[-4]  # the last real frame, repeated
    assert len(list(pad_to_frame_count(iter(_frames(10)), 4))) == 4
    with pytest.raises(ValueError):
        list(pad_to_frame_count(iter([]), 3))


def test_with_a_real_small_random_ifnet() -> None:
    torch.manual_seed(0)
    model = IFNet(channels=16).eval()
    frames = [torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    out = list(interpolate_stream(iter(frames), "rife", model.midpoint))
    assert len(out) == 5 and out[0] is frames[0] and out[2] is frames[1]
    for middle in (out[1], out[3]):
        assert middle.shape == (3, 40, 56) and middle.dtype == torch.float32 and middle.device.type == "cpu"
        assert 0.0 <= middle.min() and middle.max() <= 1.0
    # Warping a flat picture (border padding) gives the same flat picture, whatever flow the weights predict.
    flat = torch.full((3, 40, 56), 0.3)
    still = list(interpolate_stream(iter([flat, flat.clone()]), "rife", model.midpoint))
    torch.testing.assert_close(still[1], flat, atol=1e-5, rtol=0)
