"""Decode an audio (or video) file to float PCM with PyAV: the FFmpeg libraries ship inside the wheel, so decoding
works where ComfyUI runs even without ffmpeg/ffprobe on the PATH (Windows portable installs usually have none).
ComfyUI's own audio nodes decode the same way."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import BadAudioError
from .audio_checks import AUDIO_FIX, decode_failure

logger = logging.getLogger(__name__)

# Integer sample formats -> (offset, scale) to [-1, 1); float formats pass through (NaN/Inf kept, so the checks
# after decoding can refuse them instead of a conversion silently turning them into clicks).
_INT_SCALE = {"u8": (128.0, 128.0), "s16": (0.0, 32768.0), "s32": (0.0, 2.0**31), "s64": (0.0, 2.0**63)}
_FLOAT_FORMATS = frozenset({"flt", "dbl"})


def probe_duration(path: Path) -> float | None:
    """Duration from the container header, so a 3-hour file is refused before it is decoded; None if unknown."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return container.duration / 1_000_000 if container.duration else None
    except av.error.FFmpegError as exc:
        logger.debug("No header duration for %s (%s); it is checked after decoding", path.name, exc)
        return None


def decode_file(path: Path) -> tuple[np.ndarray, int]:
    """All samples of the first audio stream as float32 (channels, time) and the sample rate."""
    import av

    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise decode_failure(path, str(exc)) from exc
    with container:
        if not container.streams.audio:
            raise BadAudioError(
                problem=f"{path.name} has no audio track",
                expected="a file with an audio stream",
                fix=f"add a voice track to it, or {AUDIO_FIX}",
            )
        stream = container.streams.audio[0]
        chunks: list[np.ndarray] = []
        rate = int(stream.rate or 0)
        try:
            for frame in container.decode(stream):
                chunk = _frame_to_float(frame, path)
                if chunks and chunk.shape[0] != chunks[0].shape[0]:
                    raise decode_failure(path, "the number of channels changes in the middle of the stream")
                rate = int(frame.sample_rate or rate)
                chunks.append(chunk)
        except av.error.FFmpegError as exc:
            if not chunks:
                raise decode_failure(path, str(exc)) from exc
            # A damaged tail: keep what decoded (the checks after decoding still judge it) and say so in the log.
            logger.warning("%s: decoding stopped early (%s); using the %d frames before it", path.name, exc,
                           sum(chunk.shape[1] for chunk in chunks))
    if not chunks:
        return np.zeros((max(int(stream.channels or 1), 1), 0), dtype=np.float32), rate
    return np.ascontiguousarray(np.concatenate(chunks, axis=1), dtype=np.float32), rate


def _frame_to_float(frame: object, path: Path) -> np.ndarray:
    name = frame.format.name  # type: ignore[attr-defined]
    planar = bool(frame.format.is_planar)  # type: ignore[attr-defined]
    base = name[:-1] if planar else name
    channels = int(frame.layout.nb_channels)  # type: ignore[attr-defined]
    data = frame.to_ndarray()  # type: ignore[attr-defined]
    if not planar:  # packed: one row of interleaved samples
        data = data.reshape(-1, channels).T
    if base in _FLOAT_FORMATS:
        return data.astype(np.float32, copy=False)
    if base not in _INT_SCALE:
        raise decode_failure(path, f"unsupported decoded sample format {name}")
    offset, scale = _INT_SCALE[base]
    samples = data.astype(np.float32)
    if offset:
        samples -= np.float32(offset)
    samples *= np.float32(1.0 / scale)
    return samples
