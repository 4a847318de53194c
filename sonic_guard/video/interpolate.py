"""x2 frame interpolation (12.5 -> 25 fps) as a stream that holds only the previous frame.

The official code moves the whole decoded video back to the GPU in fp32, computes every RIFE midpoint,
stacks all 2N-1 frames and copies them back: about 12 MiB per generated frame at 512^2, which is what OOMs
on long audio. Here each pair goes to the device alone and its midpoint comes straight back.

Length: the official output has 2N-1 frames, so it lasts (2N-1)/25 s, slightly shorter than the audio, and
ffmpeg's `-shortest` cuts the audio to match. We instead repeat the last frame (`pad_to_frame_count`,
`frames_for_duration`) so the video lasts as long as the audio, within one frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import torch

from ..errors import BadInputError

logger = logging.getLogger(__name__)

InterpolationMode = Literal["rife", "blend", "none"]
MODES: tuple[str, ...] = ("rife", "blend", "none")
GENERATED_FPS = Fraction(25, 2)

Midpoint = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class InterpolationChoice:
    """The mode that will run, and a note for the user when it is not the one asked for."""

    mode: InterpolationMode
    note: str = ""


def output_fps(mode: str) -> Fraction:
    """25 fps when a midpoint is inserted between every pair, else the generated 12.5 fps."""
    _check_mode(mode)
    return GENERATED_FPS * 2 if mode in ("rife", "blend") else GENERATED_FPS


def output_frame_count(generated_frames: int, mode: str) -> int:
    """Frames the stream yields before padding: 2N-1 with a midpoint mode, N without."""
    _check_mode(mode)
    if generated_frames <= 0:
        return 0
    return 2 * generated_frames - 1 if mode in ("rife", "blend") else generated_frames


def frames_for_duration(duration_s: float, fps: Fraction) -> int:
    """Frame count whose duration is the audio's within half a frame (at least one frame)."""
    return max(1, round(Fraction(duration_s) * fps))


def choose_mode(requested: str, midpoint: Midpoint | None, fallback: str = "none") -> InterpolationChoice:
    """Resolve 'rife' without RIFE weights to the user's fallback ('none' = 12.5 fps, 'blend'), saying so."""
    _check_mode(requested)
    _check_mode(fallback)
    if requested != "rife" or midpoint is not None:
        return InterpolationChoice(mode=requested)  # type: ignore[arg-type]
    if fallback == "rife":
        raise BadInputError(
            problem="RIFE interpolation was asked for but RIFE/flownet.pkl is not loaded",
            expected="models/sonic/RIFE/flownet.pkl, or an interpolation fallback of 'blend' or 'none'",
            fix="put RIFE/flownet.pkl into the Sonic model folder, or set the fallback to 'blend' or 'none'",
        )
    fps = output_fps(fallback)
    note = (f"RIFE weights (RIFE/flownet.pkl) are missing, so frames are not RIFE-interpolated: using "
            f"'{fallback}' at {float(fps):g} fps instead")
    logger.warning(note)
    return InterpolationChoice(mode=fallback, note=note)  # type: ignore[arg-type]


def blend_midpoint(img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
    """The cheap fallback: a 50/50 cross-fade."""
    return img0 * 0.5 + img1 * 0.5


def interpolate_stream(
    frames: Iterable[torch.Tensor],
    mode: str,
    midpoint: Midpoint | None = None,
    *,
    device: str | torch.device = "cpu",
) -> Iterator[torch.Tensor]:
    """Yield f0, mid(f0,f1), f1, mid(f1,f2), ..., f_{N-1}: 2N-1 frames (N with mode 'none').

    `midpoint(img0, img1)` takes and returns (1,3,H,W) in [0,1] on `device` (RIFE's IFNet); it is only
    needed for 'rife'. Frames come in and go out as [3,H,W] float32 on the CPU; only the previous one is kept.
    """
    _check_mode(mode)
    if mode == "none":
        yield from frames
        return
    if mode == "rife" and midpoint is None:
        raise ValueError("mode 'rife' needs a midpoint callable; resolve the mode with choose_mode() first")
    previous: torch.Tensor | None = None
    for frame in frames:
        if previous is not None:
            yield _midpoint_on_device(previous, frame, mode, midpoint, device)
        yield frame
        previous = frame


def pad_to_frame_count(frames: Iterable[torch.Tensor], count: int) -> Iterator[torch.Tensor]:
    """Yield exactly `count` frames: cut extra ones, or repeat the last one (holding only that frame)."""
    last: torch.Tensor | None = None
    emitted = 0
    for frame in frames:
        if emitted >= count:
            return
        yield frame
        last = frame
        emitted += 1
    if last is None and count > 0:
        raise ValueError("cannot pad an empty frame stream")
    for _ in range(count - emitted):
        yield last  # type: ignore[misc]


def _midpoint_on_device(
    img0: torch.Tensor, img1: torch.Tensor, mode: str, midpoint: Midpoint | None, device: str | torch.device
) -> torch.Tensor:
    if mode == "blend" or midpoint is None:  # interpolate_stream only lets 'blend' through without one
        return blend_midpoint(img0, img1)
    with torch.no_grad():
        a = img0.to(device=device, dtype=torch.float32).unsqueeze(0)
        b = img1.to(device=device, dtype=torch.float32).unsqueeze(0)
        middle = midpoint(a, b)
        # Clamp like the official code, and bring the one result back before the next pair goes up.
        return middle.clamp(0.0, 1.0).squeeze(0).to("cpu", torch.float32)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise BadInputError(
            problem=f"unknown interpolation mode {mode!r}",
            expected=f"one of {', '.join(MODES)}",
            fix="pick 'rife' (25 fps, needs RIFE weights), 'blend' (25 fps cross-fade) or 'none' (12.5 fps)",
        )
