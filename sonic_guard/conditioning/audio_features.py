"""Audio features: Whisper encoder hidden states, padded and windowed per generated frame.

Mirrors the reference (spec 4.4, 4.5): the waveform is cut into independent 30 s pieces, each piece goes
through the Whisper feature extractor (padded to 3000 mel frames) and the encoder; hidden states are
concatenated, truncated to two Whisper frames (20 ms each) per 25 fps frame, and zero-padded in
hidden-state space. Generated frame i (12.5 fps) reads padded multi-layer rows [4i, 4i+10) as its token
window and padded last-layer rows [4i, 4i+50) as its motion-bucket window.

The official code caps the clip at 10000 frames at 25 fps (400 s). This module does not: long audio is
supported by splitting into segments upstream, so the cap (if any) is the caller's decision.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..errors import BadAudioError

if TYPE_CHECKING:
    from transformers import WhisperFeatureExtractor

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
PIECE_SAMPLES = 480_000  # 30 s: Whisper's fixed input length, 750 frames at 25 fps
SAMPLES_PER_FRAME_25FPS = 640  # 40 ms
WHISPER_FRAMES_PER_FRAME_25FPS = 2  # Whisper encoder frames are 20 ms
WHISPER_FRAMES_PER_GENERATED_FRAME = 4  # generated frames are every second 25 fps frame (12.5 fps)
TOKEN_PAD_FRONT, TOKEN_PAD_BACK = 4, 6
TOKEN_WINDOW = TOKEN_PAD_FRONT + TOKEN_PAD_BACK
BUCKET_PAD_FRONT, BUCKET_PAD_BACK = 24, 26
BUCKET_WINDOW = BUCKET_PAD_FRONT + BUCKET_PAD_BACK


@dataclass(frozen=True)
class AudioFeatures:
    """Padded Whisper hidden states of one clip, on the CPU in float32.

    `multi_layer`: [W + 10, 5, C] (embedding output + every layer, last = final layer norm),
    `last_layer`: [W + 50, 1, C], where W = 2 * num_frames_25fps Whisper frames.
    """

    multi_layer: torch.Tensor
    last_layer: torch.Tensor
    num_frames_25fps: int

    @property
    def num_generated_frames(self) -> int:
        """N: frames the diffusion generates (12.5 fps, one per two 25 fps frames)."""
        return self.num_frames_25fps // 2

    @property
    def num_whisper_frames(self) -> int:
        return self.num_frames_25fps * WHISPER_FRAMES_PER_FRAME_25FPS

    def token_windows(self, frame_indices: Sequence[int]) -> torch.Tensor:
        """Audio-token inputs for the given generated frames: [len, 10, 5, C]."""
        return self.multi_layer[self._window_rows(frame_indices, TOKEN_WINDOW)]

    def bucket_windows(self, frame_indices: Sequence[int]) -> torch.Tensor:
        """Motion-bucket inputs for the given generated frames: [len, 50, 1, C]."""
        return self.last_layer[self._window_rows(frame_indices, BUCKET_WINDOW)]

    def _window_rows(self, frame_indices: Sequence[int], width: int) -> torch.Tensor:
        starts = torch.as_tensor(list(frame_indices), dtype=torch.long)
        if starts.numel() and (int(starts.min()) < 0 or int(starts.max()) >= self.num_generated_frames):
            # An internal bug, not a user error: the sampler only asks for frames it owns.
            raise IndexError(
                f"frame index out of range [0, {self.num_generated_frames}): {starts.min()}..{starts.max()}"
            )
        return starts[:, None] * WHISPER_FRAMES_PER_GENERATED_FRAME + torch.arange(width)[None, :]


def num_frames_25fps(num_samples: int) -> int:
    """Count of whole 40 ms frames (no 10000-frame cap; see the module docstring)."""
    return num_samples // SAMPLES_PER_FRAME_25FPS


def extract_audio_features(
    waveform: np.ndarray,
    encoder: nn.Module,
    feature_extractor: WhisperFeatureExtractor,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> AudioFeatures:
    """Whisper hidden states for a 16 kHz mono float32 waveform.

    `encoder` is a transformers WhisperEncoder (or alike) already on `device` in `dtype`; the encoder runs one
    30 s piece at a time so device memory does not grow with the clip length, and each piece's result goes
    to the CPU. One pass with `output_hidden_states=True` yields both outputs the reference computes in two
    passes: the last hidden state equals hidden state 5.
    """
    audio = _validate_waveform(waveform)
    frames_25fps = num_frames_25fps(audio.shape[0])
    if frames_25fps // 2 < 1:
        raise BadAudioError(
            problem=f"The audio is {audio.shape[0] / SAMPLE_RATE:.3f} s long, too short to animate one frame",
            expected="at least 0.08 s of audio (one generated frame at 12.5 fps)",
            fix="use a longer audio clip",
        )
    pieces: list[torch.Tensor] = []
    for start in range(0, audio.shape[0], PIECE_SAMPLES):
        pieces.append(_encode_piece(audio[start : start + PIECE_SAMPLES], encoder, feature_extractor,
                                    device=device, dtype=dtype))
    states = torch.cat(pieces, dim=0)[: frames_25fps * WHISPER_FRAMES_PER_FRAME_25FPS]  # [W, 5, C]
    logger.debug("audio features: %d pieces, %d whisper frames", len(pieces), states.shape[0])
    return AudioFeatures(
        multi_layer=_pad_rows(states, TOKEN_PAD_FRONT, TOKEN_PAD_BACK),
        last_layer=_pad_rows(states[:, -1:], BUCKET_PAD_FRONT, BUCKET_PAD_BACK),
        num_frames_25fps=frames_25fps,
    )


def _validate_waveform(waveform: np.ndarray) -> np.ndarray:
    audio = np.asarray(waveform)
    if audio.ndim != 1:
        raise BadAudioError(
            problem=f"The waveform has shape {audio.shape}",
            expected="a mono waveform, one dimension (samples,) at 16 kHz",
            fix="mix the channels down to mono and resample to 16 kHz before feature extraction",
        )
    if not np.issubdtype(audio.dtype, np.floating):
        raise BadAudioError(
            problem=f"The waveform has sample type {audio.dtype}",
            expected="float samples in [-1, 1]",
            fix="convert integer PCM to float by dividing by the type's full scale (32768 for int16)",
        )
    audio = audio.astype(np.float32, copy=False)
    if not np.isfinite(audio).all():
        raise BadAudioError(
            problem="The waveform contains NaN or infinite samples",
            expected="finite float samples in [-1, 1]",
            fix="re-export the audio file; it is corrupt or was decoded wrongly",
        )
    return audio


@torch.no_grad()
def _encode_piece(
    piece: np.ndarray,
    encoder: nn.Module,
    feature_extractor: WhisperFeatureExtractor,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Hidden states of one <= 30 s piece: [1500, num_layers + 1, C] float32 on the CPU."""
    mel = feature_extractor(piece, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    out = encoder(mel.to(device=device, dtype=dtype), output_hidden_states=True)
    stacked = torch.stack(out.hidden_states, dim=2)[0]  # [1500, L + 1, C]
    return stacked.to(device="cpu", dtype=torch.float32)


def _pad_rows(states: torch.Tensor, front: int, back: int) -> torch.Tensor:
    """Zero rows before and after, in hidden-state space (not silence audio), as the reference does."""
    rest = states.shape[1:]
    return torch.cat([states.new_zeros((front, *rest)), states, states.new_zeros((back, *rest))], dim=0)
