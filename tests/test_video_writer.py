"""StreamingVideoWriter: real mp4s with AAC from espeak-ng speech, checked with ffprobe and decoded back."""

from __future__ import annotations

import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from scipy.io import wavfile

from sonic_guard.video.writer import StreamingVideoWriter, frame_to_uint8

pytestmark = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffprobe")


def _speech(path: Path) -> tuple[np.ndarray, int]:
    rate, samples = wavfile.read(path)
    return samples.astype(np.float32) / 32768.0, rate


def _probe(path: Path) -> dict[str, dict]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout
    return {stream["codec_type"]: stream for stream in json.loads(out)["streams"]}


def _count_streams(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as container:
        return len(container.streams.video), len(container.streams.audio)


def _decoded_audio(path: Path, rate: int = 16000) -> np.ndarray:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
    chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    return np.concatenate(chunks)


def test_rounds_floats_instead_of_truncating() -> None:
    frame = torch.full((3, 2, 2), 100.6 / 255.0)
    frame[0, 0, 0] = 1.2  # out of range values are clamped, not wrapped
    frame[1, 0, 0] = -0.3
    pixels = frame_to_uint8(frame)
    assert pixels.shape == (2, 2, 3) and pixels.dtype == np.uint8
    assert pixels[1, 1, 0] == 101  # truncation (the official x*255 -> uint8) would give 100
    assert pixels[0, 0, 0] == 255 and pixels[0, 0, 1] == 0


@pytest.mark.parametrize(
    "fps,codec", [(Fraction(25), None), (Fraction(25, 2), None), (Fraction(25), "mpeg4")]
)
def test_speech_mp4_has_one_video_one_audio_and_equal_durations(
    speech_wav: Path, tmp_path: Path, fps: Fraction, codec: str | None
) -> None:
    samples, rate = _speech(speech_wav)
    audio_s = samples.size / rate
    frames = round(audio_s * fps)
    out = tmp_path / "speech.mp4"
    with StreamingVideoWriter(out, 64, 64, fps, audio=(samples, rate), codec=codec) as writer:
        for index in range(frames):
            writer.write(torch.full((3, 64, 64), index / frames))
    info = writer.close()
    assert info.frames == frames and info.has_audio and info.fps == fps
    assert info.video_codec == (codec or "libx264")
    assert _count_streams(out) == (1, 1)
    streams = _probe(out)
    video_s, sound_s = float(streams["video"]["duration"]), float(streams["audio"]["duration"])
    frame_s = float(1 / fps)
    assert abs(video_s - info.duration_s) < 1e-3
    assert abs(video_s - sound_s) <= frame_s
    assert abs(video_s - audio_s) <= frame_s  # the file lasts as long as the speech
    assert streams["audio"]["codec_name"] == "aac" and streams["video"]["pix_fmt"] == "yuv420p"
    # The speech itself survives: decoded loudness is close to the input's.
    decoded = _decoded_audio(out)
    assert abs(np.sqrt(np.mean(decoded**2)) - np.sqrt(np.mean(samples**2))) < 0.02


def test_stereo_audio_trimmed_when_longer_and_padded_when_shorter(tmp_path: Path) -> None:
    rate = 44100
    tone = np.sin(2 * np.pi * 440 * np.arange(rate * 2) / rate).astype(np.float32) * 0.3
    stereo = np.stack([tone, -tone])
    for seconds, name in ((1.0, "trimmed"), (3.0, "padded")):
        out = tmp_path / f"{name}.mp4"
        frames = int(seconds * 25)
        with StreamingVideoWriter(out, 32, 32, 25, audio=(stereo, rate)) as writer:
            for _ in range(frames):
                writer.write(np.zeros((32, 32, 3), np.uint8))
        streams = _probe(out)
        assert streams["audio"]["channels"] == 2
        assert abs(float(streams["audio"]["duration"]) - seconds) <= 0.04
        assert abs(float(streams["video"]["duration"]) - seconds) <= 0.04


def test_audio_offset_delays_the_sound(tmp_path: Path) -> None:
    rate = 16000
    burst = np.zeros(rate * 2, np.float32)
    burst[int(0.5 * rate) : int(0.6 * rate)] = 0.5 * np.sin(np.linspace(0, 2 * np.pi * 100, int(0.1 * rate)))
    onsets = {}
    for offset in (0.0, 0.2, -0.2):
        out = tmp_path / f"offset_{offset}.mp4"
        with StreamingVideoWriter(out, 32, 32, 25, audio=(burst, rate), audio_offset_s=offset) as writer:
            for _ in range(50):
                writer.write(np.zeros((32, 32, 3), np.uint8))
        decoded = _decoded_audio(out)
        onsets[offset] = np.argmax(np.abs(decoded) > 0.1) / 16000
    assert abs(onsets[0.0] - 0.5) < 0.01
    assert abs(onsets[0.2] - onsets[0.0] - 0.2) < 0.01
    assert abs(onsets[-0.2] - onsets[0.0] + 0.2) < 0.01


def test_odd_sizes_are_cropped_to_even_and_video_only_files_work(tmp_path: Path) -> None:
    out = tmp_path / "odd.mp4"
    with StreamingVideoWriter(out, 33, 31, Fraction(25, 2)) as writer:
        for _ in range(5):
            writer.write(torch.rand(3, 31, 33))
    info = writer.close()
    assert (writer.width, writer.height) == (32, 30) and not info.has_audio
    assert _count_streams(out) == (1, 0)
    with av.open(str(out)) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(decoded) == 5 and decoded[0].shape == (30, 32, 3)
    with pytest.raises(ValueError):
        writer.write(torch.rand(3, 31, 33))  # closed


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_host_memory_stays_flat_while_writing(tmp_path: Path) -> None:
    size, rate = 128, 16000
    audio = (np.random.default_rng(0).normal(0, 0.1, rate * 30).astype(np.float32), rate)
    ramp = np.broadcast_to(np.linspace(0, 1, size, dtype=np.float32), (3, size, size))
    out = tmp_path / "long.mp4"
    with StreamingVideoWriter(out, size, size, 25, audio=audio, crf=30, preset="ultrafast") as writer:
        for index in range(400):
            writer.write(torch.from_numpy((ramp + index / 400) % 1.0))
            if index == 60:  # after the encoder's look-ahead buffers have filled
                baseline = _rss_bytes()
        grown = _rss_bytes() - baseline
    # Keeping the 340 later frames would cost 16 MiB as uint8 (64 MiB as float); allow noise only.
    assert grown < 6 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"
    assert writer.close().frames == 400


def test_writer_keeps_no_reference_to_written_frames(tmp_path: Path) -> None:
    import gc
    import weakref

    with StreamingVideoWriter(tmp_path / "refs.mp4", 32, 32, 25) as writer:
        frame = torch.rand(3, 32, 32)
        ref = weakref.ref(frame)
        writer.write(frame)
        del frame
        gc.collect()
        assert ref() is None


def test_write_stream_sizes_from_the_first_frame_and_reports_progress(tmp_path: Path) -> None:
    from sonic_guard.video.writer import write_stream

    ticks: list[int] = []
    frames = (torch.full((3, 24, 40), index / 10) for index in range(10))
    info = write_stream(frames, tmp_path / "stream.mp4", Fraction(25, 2), on_frame=ticks.append)
    assert info.frames == 10 and ticks == list(range(1, 11)) and abs(info.duration_s - 0.8) < 1e-9
    with av.open(str(tmp_path / "stream.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (40, 24) and stream.average_rate == Fraction(25, 2)
    with pytest.raises(ValueError):
        write_stream(iter([]), tmp_path / "empty.mp4", 25)
