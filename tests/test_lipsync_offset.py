"""Lip-sync offset: a synthetic mouth follows real espeak speech 0.12 s late; measured, then corrected."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from scipy.io import wavfile
from scipy.signal import resample_poly

from sonic_guard.video.lipsync import (
    MouthMotionMeter,
    OffsetEstimate,
    measure_av_offset,
    mouth_box_from_face,
    mouth_motion_energy,
)
from sonic_guard.video.writer import StreamingVideoWriter

FPS = 25
SIZE = 64
FACE = (12, 8, 52, 60)
TEXT = "Good morning everyone. Today we talk about streaming video, and how lips move when people speak."


@pytest.fixture(scope="module")
def speech_16k(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    path = tmp_path_factory.mktemp("lipsync") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), TEXT], check=True, capture_output=True)
    rate, samples = wavfile.read(path)
    return resample_poly(samples.astype(np.float32) / 32768.0, 16000, rate).astype(np.float32)


def _envelope_at(audio: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """A 30 ms moving average of |audio| (not the measurer's own RMS), read at the given times."""
    smooth = np.convolve(np.abs(audio), np.ones(480) / 480, mode="same")
    index = np.round(seconds * 16000).astype(int)
    inside = (index >= 0) & (index < audio.size)
    return np.where(inside, smooth[np.clip(index, 0, audio.size - 1)], 0.0)


def _face_frames(audio: np.ndarray, delay_s: float) -> list[np.ndarray]:
    """Static textured face; the mouth's brightness follows the speech envelope `delay_s` late."""
    rng = np.random.default_rng(0)
    count = int(audio.size / 16000 * FPS)
    opening = _envelope_at(audio, np.arange(count) / FPS - delay_s)
    opening = opening / opening.max()
    texture = rng.integers(60, 200, size=(SIZE, SIZE, 3)).astype(np.float32)
    x0, y0, x1, y1 = mouth_box_from_face(FACE, SIZE, SIZE)
    frames = []
    for value in opening:
        frame = texture + rng.normal(0, 2.0, texture.shape)  # sensor noise everywhere
        frame[y0:y1, x0:x1] = 40 + 180 * value
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def _energies(frames: list[np.ndarray]) -> np.ndarray:
    meter = MouthMotionMeter(mouth_box_from_face(FACE, SIZE, SIZE))
    for frame in frames:
        meter.update(frame)
    return meter.energies


def _read_back(path: Path) -> tuple[np.ndarray, np.ndarray]:
    box = mouth_box_from_face(FACE, SIZE, SIZE)
    energies, previous = [], None
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            pixels = frame.to_ndarray(format="rgb24")
            energies.append(0.0 if previous is None else mouth_motion_energy(previous, pixels, box))
            previous = pixels
    resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
    chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    return np.asarray(energies), np.concatenate(chunks)


@pytest.mark.parametrize("delay_s", [0.12, -0.2, 0.0])
def test_measures_the_known_offset(speech_16k: np.ndarray, delay_s: float) -> None:
    estimate = measure_av_offset(_energies(_face_frames(speech_16k, delay_s)), speech_16k, FPS)
    assert abs(estimate.offset_s - delay_s) <= 0.04
    assert estimate.confidence > 0.6


def test_correction_leaves_a_residual_within_50_ms(speech_16k: np.ndarray, tmp_path: Path) -> None:
    frames = _face_frames(speech_16k, 0.12)
    estimate = measure_av_offset(_energies(frames), speech_16k, FPS)
    results = {}
    for name, shift in (("raw", 0.0), ("fixed", estimate.correction_s())):
        path = tmp_path / f"{name}.mp4"
        with StreamingVideoWriter(path, SIZE, SIZE, FPS, audio=(speech_16k, 16000), audio_offset_s=shift,
                                  preset="ultrafast") as writer:
            for frame in frames:
                writer.write(frame)
        energies, audio = _read_back(path)
        results[name] = measure_av_offset(energies, audio, FPS)
    # Reading the encoded file back still sees the 0.12 s lag, and the corrected file has none left.
    assert abs(results["raw"].offset_s - 0.12) <= 0.04
    assert abs(results["fixed"].offset_s) <= 0.05


def test_unrelated_motion_gives_low_confidence_and_no_correction(speech_16k: np.ndarray) -> None:
    count = int(speech_16k.size / 16000 * FPS)
    noise = np.abs(np.random.default_rng(3).normal(size=count))
    estimate = measure_av_offset(noise, speech_16k, FPS)
    assert estimate.confidence < 0.3 and estimate.correction_s() == 0.0
    assert measure_av_offset(noise[:5], speech_16k, FPS) == OffsetEstimate(0.0, 0.0)  # too short to judge
    assert OffsetEstimate(0.1, 0.9).correction_s() == 0.1
