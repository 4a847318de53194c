"""Validation of audio inputs: every failure says what was wrong, what was expected and how to fix it."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np

from ..errors import BadAudioError

logger = logging.getLogger(__name__)

TARGET_SAMPLE_RATE = 16000
# Sonic generates one frame per two 25 fps audio frames (640 samples each at 16 kHz): 80 ms is one frame.
MIN_AUDIO_S = 0.08
RECOMMENDED_MIN_S = 1.0
DEFAULT_MAX_DURATION_S = 600.0
SILENCE_PEAK = 1e-4
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768000

# Files that are certainly not audio: say "unsupported format" instead of a raw decoder error.
_NOT_AUDIO_SUFFIXES = frozenset(
    ".png .jpg .jpeg .webp .bmp .gif .tif .tiff .txt .json .yaml .yml .csv .md .pdf .zip .safetensors .pt "
    ".pth .ckpt .bin .py".split()
)
# Small files decode quickly and are checked after decoding; big ones have their header duration read first.
_PROBE_ABOVE_BYTES = 8 * 1024 * 1024
AUDIO_FIX = "use a speech recording in wav, mp3, flac, m4a or ogg (or a video file with an audio track)"


def check_file_before_decoding(path: Path, max_duration_s: float | None) -> None:
    """Cheap checks before decoding: missing, empty, obviously not audio, far too long."""
    if not path.is_file():
        raise BadAudioError(
            problem=f"The audio file {path} does not exist",
            expected="an existing audio file",
            fix="check the file name, or upload the audio again",
        )
    if path.stat().st_size == 0:
        raise BadAudioError(
            problem=f"The audio file {path.name} is empty (0 bytes)",
            expected="a file containing recorded audio",
            fix="re-export or re-upload the audio; the upload or copy probably failed",
        )
    if path.suffix.lower() in _NOT_AUDIO_SUFFIXES:
        raise BadAudioError(
            problem=f"{path.name} is a {path.suffix.lower()} file, which is not an audio format",
            expected="an audio file",
            fix=AUDIO_FIX,
        )
    if max_duration_s is not None and path.stat().st_size > _PROBE_ABOVE_BYTES:
        from .audio_decode import probe_duration  # late: audio_decode builds its errors with this module

        probed = probe_duration(path)
        if probed is not None and probed > max_duration_s:
            raise too_long(probed, max_duration_s, path.name)


def decode_failure(path: Path, detail: str) -> BadAudioError:
    """The error for a file FFmpeg (inside PyAV) cannot read, with its most useful line."""
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    useful = [line for line in lines if "error" in line.lower() or "invalid" in line.lower()]
    summary = (useful or lines or ["no details"])[-1].replace(str(path), path.name)[:200]
    return BadAudioError(
        problem=f"Could not decode the audio file {path.name}: it is corrupt or not in an audio format "
        f"FFmpeg reads (FFmpeg: {summary})",
        expected="a complete, playable audio file",
        fix=f"check that the file plays in a media player, re-export it, or {AUDIO_FIX}",
    )


def too_long(duration_s: float, max_duration_s: float, source: str) -> BadAudioError:
    return BadAudioError(
        problem=f"The audio ({source}) is {duration_s:.1f} s long, over the {max_duration_s:g} s limit",
        expected=f"at most {max_duration_s:g} s ({max_duration_s / 60:g} min)",
        fix="set a shorter duration, cut the audio into segments and generate them one by one, "
        "or raise the max audio seconds setting if you really want one long video",
    )


def check_decoded(samples: np.ndarray, rate: int, source: str, max_duration_s: float | None) -> None:
    """Checks on decoded float samples shaped (channels, time) at their own rate."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise BadAudioError(
            problem=f"The audio ({source}) has a sample rate of {rate} Hz",
            expected=f"between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz (e.g. 16000, 44100, 48000)",
            fix="resample the audio to 44100 or 48000 Hz",
        )
    if samples.size == 0 or samples.shape[-1] == 0:
        raise BadAudioError(
            problem=f"The audio ({source}) contains no samples",
            expected="a recording at least 1 s long",
            fix="check that the file really has an audio track with sound in it",
        )
    bad = int(np.count_nonzero(~np.isfinite(samples)))
    if bad:
        raise BadAudioError(
            problem=f"The audio ({source}) contains {bad} NaN or infinite sample values out of {samples.size}",
            expected="finite sample values between -1 and 1",
            fix="the audio was corrupted by an earlier node or export; re-export it or check the node before",
        )
    duration = samples.shape[-1] / rate
    if duration < MIN_AUDIO_S:
        raise BadAudioError(
            problem=f"The audio ({source}) lasts only {duration * 1000:.0f} ms, too short for one video frame",
            expected=f"at least {MIN_AUDIO_S * 1000:.0f} ms; {RECOMMENDED_MIN_S:g} s or more for visible lip sync",
            fix="use a longer speech recording",
        )
    if max_duration_s is not None and duration > max_duration_s:
        raise too_long(duration, max_duration_s, source)


def check_playable(waveform_16k: np.ndarray, source: str, notes: list[str] | None) -> None:
    """Refuse silence (lip sync needs speech); add a note when the audio is shorter than recommended."""
    peak = float(np.max(np.abs(waveform_16k))) if waveform_16k.size else 0.0
    if peak < SILENCE_PEAK:
        raise BadAudioError(
            problem=f"The audio ({source}) is silent (peak level {peak:.1e})",
            expected="speech or singing: lip sync follows the voice",
            fix="use a recording with audible speech, or check the volume and the duration setting",
        )
    seconds = waveform_16k.shape[0] / TARGET_SAMPLE_RATE
    if notes is not None and seconds < RECOMMENDED_MIN_S:
        notes.append(
            f"The audio is only {seconds:.2f} s long; at least {RECOMMENDED_MIN_S:g} s gives visible lip sync."
        )
        logger.warning(notes[-1])


_HEADER_BYTES = 65536


def _read_header(path: Path) -> tuple[bytes, int] | None:
    """The file's first bytes (enough for RIFF chunk headers) and its size, or None when it cannot be read."""
    try:
        with path.open("rb") as handle:
            header = handle.read(_HEADER_BYTES)
        return header, path.stat().st_size
    except OSError:
        return None


def wav_truncation_note(path: Path, decoded_frames: int, rate: int) -> str | None:
    """A note when a RIFF/WAVE file's data chunk promises more bytes than the file holds (a cut-off copy or
    recording): FFmpeg decodes what is there without a word, and for integer PCM it even reports the shortened
    duration, so only the header tells; otherwise the video would silently be shorter than the user expects.
    None for complete files, streamed wavs (size 0 or 0xFFFFFFFF) and non-wavs."""
    read = _read_header(path)
    if read is None:
        return None
    header, file_size = read
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return None
    bytes_per_second = block = 0
    position = 12
    while position + 8 <= len(header):
        chunk_id = header[position : position + 4]
        size = struct.unpack_from("<I", header, position + 4)[0]
        body = position + 8
        if chunk_id == b"fmt " and body + 14 <= len(header):
            bytes_per_second, block = struct.unpack_from("<IH", header, body + 8)
        elif chunk_id == b"data":
            missing = size - (file_size - body)
            # Less than one sample frame short is only a missing pad byte, not lost audio.
            if size in (0, 0xFFFFFFFF) or bytes_per_second <= 0 or missing < max(block, 1):
                return None
            promised, present = size / bytes_per_second, decoded_frames / rate
            note = (
                f"{path.name} is cut short: its WAV header promises {promised:.2f} s of audio but the file holds "
                f"only {present:.2f} s (an interrupted copy, download or recording?). The {present:.2f} s there "
                "are used; copy or export the file again to animate all of it."
            )
            logger.warning(note)
            return note
        position = body + size + (size & 1)
    return None
