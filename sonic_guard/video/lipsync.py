"""lip_sync_correction: measure the audio-video offset from the picture itself, then shift the audio.

Video feature: motion energy of the mouth region (mean absolute difference between consecutive frames).
Audio feature: how much the loudness changes from one frame to the next (|diff| of the per-frame RMS), since a
mouth moves when the sound starts, stops or changes, not while it stays loud. Both are normalised and
cross-correlated over lags within +-0.5 s; the best lag is refined to sub-frame precision with a parabola.

Sign: offset_s > 0 means the mouth moves after the sound (the picture lags). Muxing the audio with
`audio_offset_s = offset_s` (StreamingVideoWriter, stitch_videos) delays the audio by as much and removes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import BadAudioError

logger = logging.getLogger(__name__)

AUDIO_RATE = 16000
MAX_OFFSET_S = 0.5
MIN_CONFIDENCE = 0.3
MIN_FRAMES = 25

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive


@dataclass(frozen=True)
class OffsetEstimate:
    """offset_s > 0: the mouth moves offset_s after the sound. confidence: peak correlation in [0, 1]."""

    offset_s: float
    confidence: float

    def correction_s(self, min_confidence: float = MIN_CONFIDENCE) -> float:
        """The audio delay to apply, or 0 when the measurement is too weak to trust."""
        return self.offset_s if self.confidence >= min_confidence else 0.0


def mouth_box_from_face(face_box: Box, width: int, height: int) -> Box:
    """The lower-middle part of a face box, where the mouth is, clipped to the image."""
    x0, y0, x1, y1 = face_box
    w, h = x1 - x0, y1 - y0
    box = (x0 + w // 4, y0 + (h * 3) // 5, x1 - w // 4, y1 - h // 20)
    return (max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height))


def _gray_crop(frame: np.ndarray | torch.Tensor, box: Box) -> np.ndarray:
    """Grey levels in [0,1] of the box, from uint8 HxWx3 or float [3,H,W] in [0,1]."""
    x0, y0, x1, y1 = box
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8:
        return frame[y0:y1, x0:x1].astype(np.float32).mean(axis=2) / 255.0
    tensor = torch.as_tensor(frame)[:, y0:y1, x0:x1]
    return tensor.to(torch.float32).mean(dim=0).cpu().numpy()


def mouth_motion_energy(
    frame_prev: np.ndarray | torch.Tensor, frame: np.ndarray | torch.Tensor, mouth_box: Box
) -> float:
    """Mean absolute grey-level change inside the mouth box between two consecutive frames."""
    before, after = _gray_crop(frame_prev, mouth_box), _gray_crop(frame, mouth_box)
    if before.size == 0:
        raise ValueError(f"mouth box {mouth_box} is empty for a frame of this size")
    return float(np.abs(after - before).mean())


@dataclass
class MouthMotionMeter:
    """Streaming helper: `update(frame)` per written frame; keeps the previous crop and one float a frame."""

    mouth_box: Box
    _previous: np.ndarray | None = field(default=None, init=False, repr=False)
    _energies: list[float] = field(default_factory=list, init=False, repr=False)

    def update(self, frame: np.ndarray | torch.Tensor) -> None:
        crop = _gray_crop(frame, self.mouth_box)
        self._energies.append(0.0 if self._previous is None else float(np.abs(crop - self._previous).mean()))
        self._previous = crop

    @property
    def energies(self) -> np.ndarray:
        return np.asarray(self._energies, dtype=np.float64)


def audio_loudness_per_frame(audio: np.ndarray, fps: float, num_frames: int,
                             sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """RMS of the audio in a one-frame window centred on each frame's time."""
    samples = np.asarray(audio, dtype=np.float64).reshape(-1)
    half = 0.5 * sample_rate / fps
    out = np.zeros(num_frames, dtype=np.float64)
    for i in range(num_frames):
        centre = i * sample_rate / fps
        lo, hi = max(int(round(centre - half)), 0), min(int(round(centre + half)), samples.size)
        if hi > lo:
            out[i] = np.sqrt(np.mean(samples[lo:hi] ** 2))
    return out


def measure_av_offset(
    frames_mouth_energy: np.ndarray,
    audio_16k: np.ndarray,
    fps: float,
    *,
    max_offset_s: float = MAX_OFFSET_S,
    sample_rate: int = AUDIO_RATE,
) -> OffsetEstimate:
    """Estimate how far the mouth motion lags the audio (seconds, sub-frame) within +-max_offset_s.

    `frames_mouth_energy[i]` is the motion between frames i-1 and i (0 for the first frame).
    """
    video = np.asarray(frames_mouth_energy, dtype=np.float64).reshape(-1)
    if video.size < MIN_FRAMES:
        return OffsetEstimate(0.0, 0.0)
    if np.asarray(audio_16k).size < sample_rate / fps:
        raise BadAudioError(
            problem="the audio is shorter than one video frame",
            expected="the speech track the video was made from",
            fix="pass the same audio that drove the generation",
        )
    loudness = audio_loudness_per_frame(audio_16k, fps, video.size, sample_rate)
    audio = np.zeros_like(loudness)
    audio[1:] = np.abs(np.diff(loudness))
    max_lag = max(1, min(int(max_offset_s * fps), video.size // 3))
    lags = np.arange(-max_lag, max_lag + 1)
    scores = np.array([_lagged_correlation(video, audio, int(lag)) for lag in lags])
    best = int(np.argmax(scores))
    refined = float(lags[best]) + _parabola_peak(scores, best)
    estimate = OffsetEstimate(offset_s=refined / fps, confidence=float(np.clip(scores[best], 0.0, 1.0)))
    logger.info("audio-video offset %.3f s (confidence %.2f)", estimate.offset_s, estimate.confidence)
    return estimate


def _lagged_correlation(video: np.ndarray, audio: np.ndarray, lag: int) -> float:
    """Pearson correlation of video[i] with audio[i - lag] over the frames both cover (skipping frame 0)."""
    start = 1 + max(lag, 0)
    stop = video.size + min(lag, 0)
    v, a = video[start:stop], audio[start - lag : stop - lag]
    if v.size < 3 or v.std() == 0.0 or a.std() == 0.0:
        return 0.0
    return float(np.corrcoef(v, a)[0, 1])


def _parabola_peak(scores: np.ndarray, best: int) -> float:
    """Sub-sample shift of the peak from a parabola through it and its neighbours (0 at the edges)."""
    if best == 0 or best == scores.size - 1:
        return 0.0
    left, centre, right = scores[best - 1], scores[best], scores[best + 1]
    curvature = left - 2.0 * centre + right
    if curvature >= 0.0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
