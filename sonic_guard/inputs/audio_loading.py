"""Audio input: decode a file or a ComfyUI AUDIO dict into 16 kHz mono for Whisper, plus a mux copy.

The 16 kHz mono waveform feeds the feature extractor (the reference uses `librosa.load(sr=16000)`);
`original_waveform` keeps the user's own rate and (at most two) channels so the video writer can mux
the audio at its own quality.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from ..errors import BadAudioError, BadInputError
from .audio_checks import (
    DEFAULT_MAX_DURATION_S,
    MIN_AUDIO_S,
    TARGET_SAMPLE_RATE,
    check_decoded,
    check_file_before_decoding,
    check_playable,
    wav_truncation_note,
)
from .audio_decode import decode_file

logger = logging.getLogger(__name__)

# 5.1 in the WAV/FFmpeg channel order FL FR FC LFE BL BR: centre and surrounds at -3 dB, LFE dropped.
_SURROUND_GAIN = 0.7071
_FIVE_ONE_TO_STEREO = (
    (1.0, 0.0, _SURROUND_GAIN, 0.0, _SURROUND_GAIN, 0.0),
    (0.0, 1.0, _SURROUND_GAIN, 0.0, 0.0, _SURROUND_GAIN),
)


# Optional key of a ComfyUI AUDIO dict: notes from our Load Audio node (a cut-off wav, a mixdown) that must reach the
# run's report; other nodes ignore it, and AUDIO from other loaders simply has none.
AUDIO_NOTES_KEY = "sonic_guard_notes"


@dataclass(frozen=True, eq=False)
class LoadedAudio:
    """Decoded audio: `waveform` is float32 mono at 16 kHz; the rest describes the original."""

    waveform: np.ndarray
    sample_rate: int
    channels: int
    duration_s: float
    source: str
    original_waveform: np.ndarray
    notes: tuple[str, ...] = ()

    @property
    def original_sample_rate(self) -> int:
        """Rate of `original_waveform` (the user's own rate)."""
        return self.sample_rate


def load_audio_file(path: Path, *, max_duration_s: float | None = DEFAULT_MAX_DURATION_S) -> LoadedAudio:
    """Decode any file FFmpeg reads (mp3, wav, flac, m4a, ogg, a video's sound ...) through PyAV."""
    path = Path(path)
    check_file_before_decoding(path, max_duration_s)
    samples, rate = decode_file(path)
    truncated = wav_truncation_note(path, samples.shape[-1], rate) if rate > 0 else None
    return _build(samples, rate, f"file {path.name}", (truncated,) if truncated else (), max_duration_s)


def audio_from_comfy(audio: Mapping, *, max_duration_s: float | None = DEFAULT_MAX_DURATION_S) -> LoadedAudio:
    """Convert ComfyUI's AUDIO dict {"waveform": Tensor[B, C, T], "sample_rate": int}."""
    if not isinstance(audio, Mapping) or "waveform" not in audio or "sample_rate" not in audio:
        raise BadAudioError(
            problem="The audio input is not a ComfyUI AUDIO value",
            expected='a dict with "waveform" (tensor [batch, channels, samples]) and "sample_rate"',
            fix="connect the output of a Load Audio node (or another node that returns AUDIO)",
        )
    waveform = audio["waveform"]
    rate = audio["sample_rate"]
    if hasattr(waveform, "detach"):
        waveform = waveform.detach().to("cpu").float().numpy()
    array = np.asarray(waveform, dtype=np.float32)
    notes = [str(note) for note in audio.get(AUDIO_NOTES_KEY, ())]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise BadAudioError(
            problem=f"The AUDIO waveform has shape {tuple(array.shape)}",
            expected="shape [batch >= 1, channels >= 1, samples]",
            fix="connect a Load Audio node output directly, or re-save the audio as a wav file",
        )
    if array.shape[0] > 1:
        notes.append(f"The AUDIO input holds a batch of {array.shape[0]} clips; only the first is used.")
        logger.warning(notes[-1])
    try:
        rate_int = int(rate)
    except (TypeError, ValueError) as exc:
        raise BadAudioError(
            problem=f"The AUDIO sample rate {rate!r} is not a number",
            expected="a positive integer sample rate such as 44100",
            fix="connect a Load Audio node output directly",
        ) from exc
    return _build(array[0], rate_int, "ComfyUI AUDIO input", tuple(notes), max_duration_s)


def fit_duration(audio: LoadedAudio, duration: float | None) -> tuple[LoadedAudio, str]:
    """Trim, or pad with silence, to `duration` seconds; None or 0 keeps the whole audio.

    The message always says what was done.
    """
    if duration is None or duration == 0:
        return audio, f"Using the whole audio: {audio.duration_s:.2f} s."
    if not np.isfinite(duration) or duration < 0:
        raise BadInputError(
            problem=f"The duration {duration!r} is not usable",
            expected="0 (use the whole audio) or a positive number of seconds",
            fix="set duration to 0 for automatic, or to the number of seconds to generate",
        )
    if duration < MIN_AUDIO_S:
        raise BadInputError(
            problem=f"The duration {duration:g} s is shorter than one generated frame ({MIN_AUDIO_S * 1000:.0f} ms)",
            expected=f"at least {MIN_AUDIO_S:g} s, ideally 1 s or more",
            fix="raise the duration, or set it to 0 to use the whole audio",
        )
    target = int(round(duration * TARGET_SAMPLE_RATE))
    target_original = int(round(duration * audio.sample_rate))
    current = audio.waveform.shape[0]
    if target == current:
        return audio, f"Using the whole audio: {audio.duration_s:.2f} s (matches the requested duration)."
    waveform = _fit_length(audio.waveform[None], target)[0]
    original = _fit_length(audio.original_waveform, target_original)
    fitted = replace(audio, waveform=waveform, original_waveform=original, duration_s=target / TARGET_SAMPLE_RATE)
    if target < current:
        check_playable(waveform, f"the first {duration:g} s of the audio", None)
        message = (
            f"Trimmed the audio from {audio.duration_s:.2f} s to {fitted.duration_s:.2f} s "
            f"(the duration setting); the last {audio.duration_s - fitted.duration_s:.2f} s are not used."
        )
    else:
        message = (
            f"Padded the audio from {audio.duration_s:.2f} s to {fitted.duration_s:.2f} s with "
            f"{fitted.duration_s - audio.duration_s:.2f} s of silence at the end (the duration setting); "
            "the face stays quiet during the silence."
        )
    logger.info(message)
    return fitted, message


def _fit_length(channels_first: np.ndarray, length: int) -> np.ndarray:
    current = channels_first.shape[1]
    if length <= current:
        return np.ascontiguousarray(channels_first[:, :length])
    padding = np.zeros((channels_first.shape[0], length - current), dtype=np.float32)
    return np.concatenate([channels_first, padding], axis=1)


def _build(
    samples: np.ndarray, rate: int, source: str, notes: tuple[str, ...], max_duration_s: float | None
) -> LoadedAudio:
    """Validate (C, T) float samples, keep a <=2-channel copy, and make 16 kHz mono."""
    check_decoded(samples, rate, source, max_duration_s)
    channels = samples.shape[0]
    original = _to_at_most_stereo(samples)
    mono = original.mean(axis=0) if original.shape[0] > 1 else original[0]
    waveform = resample_to_16k(mono, rate)
    notes_list = list(notes)
    if channels > 2:
        notes_list.append(
            f"Mixed {channels} audio channels down to stereo (kept for the video) and mono (for lip sync)."
        )
    check_playable(waveform, source, notes_list)
    return LoadedAudio(
        waveform=waveform,
        sample_rate=rate,
        channels=channels,
        duration_s=waveform.shape[0] / TARGET_SAMPLE_RATE,
        source=source,
        original_waveform=np.ascontiguousarray(original, dtype=np.float32),
        # AUDIO from our Load Audio node carries its notes, and the short-audio check runs again: say it once.
        notes=tuple(dict.fromkeys(notes_list)),
    )


def _to_at_most_stereo(samples: np.ndarray) -> np.ndarray:
    channels = samples.shape[0]
    if channels <= 2:
        return samples.astype(np.float32, copy=False)
    if channels == 6:
        # Normalised so a full-scale signal in every channel cannot clip.
        matrix = np.asarray(_FIVE_ONE_TO_STEREO, dtype=np.float32) / (1.0 + 2 * _SURROUND_GAIN)
        return (matrix @ samples).astype(np.float32)
    # Unknown layout: the same average on both sides is the only order-independent choice.
    mono = samples.mean(axis=0, dtype=np.float32)
    return np.stack([mono, mono])


def resample_to_16k(mono: np.ndarray, rate: int) -> np.ndarray:
    """Polyphase resampling to 16 kHz (exact for 8 k, 22.05 k, 44.1 k, 48 k, 192 k ...)."""
    mono = np.asarray(mono, dtype=np.float32)
    if rate == TARGET_SAMPLE_RATE:
        return mono.copy()
    divisor = gcd(TARGET_SAMPLE_RATE, rate)
    resampled = resample_poly(mono, TARGET_SAMPLE_RATE // divisor, rate // divisor)
    return np.ascontiguousarray(resampled, dtype=np.float32)
