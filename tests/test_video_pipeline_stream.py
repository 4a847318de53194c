"""The tail of the data path as one stream: decode, smooth, interpolate, pad, mp4 with speech."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder
from scipy.io import wavfile

from sonic_guard.video.decode import SVD_LATENT_SCALE, decode_stream, vae_chunk_decoder
from sonic_guard.video.interpolate import (
    choose_mode,
    frames_for_duration,
    interpolate_stream,
    output_fps,
    pad_to_frame_count,
)
from sonic_guard.video.smoothing import smooth_motion
from sonic_guard.video.writer import write_stream


@pytest.mark.parametrize("fallback", ["none", "blend"])
def test_speech_length_video_without_rife_weights(speech_wav: Path, tmp_path: Path, fallback: str) -> None:
    rate, samples = wavfile.read(speech_wav)
    audio = samples.astype(np.float32) / 32768.0
    audio_s = audio.size / rate
    generated = int(audio_s * 25) // 2  # N = 25 fps frame count // 2, as the official code does
    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=(32,), layers_per_block=1).eval()
    latents = torch.randn(generated, 4, 8, 8) * SVD_LATENT_SCALE

    choice = choose_mode("rife", None, fallback=fallback)  # no RIFE weights: the user's fallback, said aloud
    assert choice.mode == fallback and choice.note
    fps = output_fps(choice.mode)
    frames = decode_stream(latents, vae_chunk_decoder(vae), chunk_size=8)
    frames = smooth_motion(frames, 0.5)
    frames = interpolate_stream(frames, choice.mode)
    frames = pad_to_frame_count(frames, frames_for_duration(audio_s, fps))
    info = write_stream(frames, tmp_path / "out.mp4", fps, (audio, rate))

    assert abs(info.duration_s - audio_s) <= float(1 / fps)
    with av.open(str(tmp_path / "out.mp4")) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        video_s = float(video.duration * video.time_base)
        sound_s = float(sound.duration * sound.time_base)
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == info.frames
    assert abs(video_s - sound_s) <= float(1 / fps) and abs(video_s - audio_s) <= float(1 / fps)
