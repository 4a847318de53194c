"""What a user asks of one generation, validated before anything heavy runs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .conditioning.reference_image import MIN_RESOLUTION_RANGE
from .errors import BadInputError
from .sampling.multi_device.devices import parse_devices

INTERPOLATION_MODES = ("rife", "blend", "none")
STEPS_RANGE = (1, 100)


@dataclass(frozen=True)
class GenerationSettings:
    """User-facing parameters (names as in the official Sonic where it has them).

    - `dynamic_scale` multiplies both motion buckets (the official behaviour).
    - `motion_scale` is ours (the official code has none): it multiplies only the first bucket, which drives head
      motion, so 0.5 calms the head while lips keep their full expression; 1.0 is the official behaviour.
    - `smooth_motion` 0..1: strength of a 3-frame temporal filter on the output frames (0 = off).
    - `lip_sync_correction`: measure the audio-video offset of the finished video and shift the audio to cancel it.
    - `devices` is ours: "cuda:0,cuda:1" (or "cpu,cpu") samples one video with one worker process per device,
      each step's windows split between them (`multi_device`); "" = the one device of the run.
    - `compile_unet` is ours: sampling runs the UNet through `torch.compile` (`models.compiled_unet`); the first
      run of a size compiles (minutes on a GPU), later processes load the result from beside the run history;
      skipped with UNet weight streaming. Results move by float32 noise only.
    """

    duration: float = 0.0  # 0 = the whole audio
    min_resolution: int = 512
    expand_ratio: float = 0.5
    crop_face: bool = True
    inference_steps: int = 25
    dynamic_scale: float = 1.0
    motion_scale: float = 1.0
    seed: int = 0
    lip_sync_correction: bool = False
    smooth_motion: float = 0.0
    interpolation: str = "rife"
    interpolation_fallback: str = "none"
    ip_audio_scale: float = 1.0
    devices: str = ""
    compile_unet: bool = False

    def __post_init__(self) -> None:
        parse_devices(self.devices)
        _check_range("min_resolution", self.min_resolution, *MIN_RESOLUTION_RANGE, "short side of the video in px")
        if self.min_resolution % 64:
            raise BadInputError(
                problem=f"min_resolution {self.min_resolution} is not a multiple of 64",
                expected="a multiple of 64 (the UNet works on 8x-downsampled latents in 8-px blocks)",
                fix=f"use {max(64, round(self.min_resolution / 64) * 64)}",
            )
        _check_range("inference_steps", self.inference_steps, *STEPS_RANGE, "denoising steps")
        _check_range("duration", self.duration, 0.0, 3600.0, "seconds of audio to use (0 = all)")
        _check_range("expand_ratio", self.expand_ratio, 0.0, 2.0, "face-box growth per side")
        _check_range("dynamic_scale", self.dynamic_scale, 0.0, 4.0, "motion bucket multiplier (official 0.5-2)")
        _check_range("motion_scale", self.motion_scale, 0.0, 4.0, "head-motion multiplier")
        _check_range("smooth_motion", self.smooth_motion, 0.0, 1.0, "smoothing strength")
        _check_range("ip_audio_scale", self.ip_audio_scale, 0.0, 4.0, "audio attention scale")
        _check_range("seed", self.seed, 0, 2**64 - 1, "a non-negative integer")
        for name in ("interpolation", "interpolation_fallback"):
            value = getattr(self, name)
            if value not in INTERPOLATION_MODES:
                raise BadInputError(
                    problem=f"{name} '{value}' is not known",
                    expected=f"one of {', '.join(INTERPOLATION_MODES)}",
                    fix="pick one of those",
                )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # left out when unset, so reports and segment fingerprints of runs without them stay as they were
        if not self.devices:
            del data["devices"]
        if not self.compile_unet:
            del data["compile_unet"]
        return data

    @property
    def device_list(self) -> tuple[str, ...]:
        """The parsed `devices` (() = one device)."""
        return parse_devices(self.devices)


def widget_number_problem(name: str, value: float, low: float | None, high: float | None) -> str | None:
    """Why a number typed into a widget cannot be used (NaN, infinite, outside its declared range), or None.

    A node's queue-time validator calls this: ComfyUI's own range check cannot see NaN (every comparison with it
    is false), and a prompt holding one would reach the history with a bare NaN that breaks the editor's JSON.
    """
    try:
        _check_range(name, value, -math.inf if low is None else low, math.inf if high is None else high,
                     "the range the node declares")
    except BadInputError as error:
        return str(error)
    return None


def _check_range(name: str, value: float, low: float, high: float, meaning: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise BadInputError(problem=f"{name} is {value}", expected=f"a finite number ({meaning})",
                            fix=f"set {name} between {low} and {high}")
    if not low <= value <= high:
        raise BadInputError(
            problem=f"{name} = {value} is out of range",
            expected=f"{low} to {high} ({meaning})",
            fix=f"set {name} between {low} and {high}",
        )

