"""Audio input: real espeak-ng speech through PyAV in many formats, rates and channel counts (ffmpeg makes them)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from sonic_guard.errors import BadAudioError, BadInputError
from sonic_guard.inputs.audio_loading import (
    AUDIO_NOTES_KEY,
    LoadedAudio,
    audio_from_comfy,
    fit_duration,
    load_audio_file,
)

pytestmark = [
    pytest.mark.skipif(
        shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None,
        reason="needs ffmpeg and espeak-ng",
    ),
    pytest.mark.filterwarnings("ignore:'audioop' is deprecated:DeprecationWarning"),
]


def _ffmpeg(src: Path, dst: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), *args, str(dst)], check=True)
    return dst


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(out), "Hello, this is a lip sync test."], check=True)
    return out


def _expected_seconds(path: Path) -> float:
    with wave.open(str(path)) as handle:
        return handle.getnframes() / handle.getframerate()


def _check_speech(loaded: LoadedAudio, seconds: float, tolerance: float = 0.06) -> None:
    assert loaded.waveform.dtype == np.float32 and loaded.waveform.ndim == 1
    assert abs(loaded.duration_s - seconds) < tolerance
    assert abs(loaded.waveform.shape[0] / 16000 - loaded.duration_s) < 1e-6
    peak = np.abs(loaded.waveform).max()
    assert 0.05 < peak < 1.5
    assert loaded.original_waveform.dtype == np.float32
    assert loaded.original_waveform.shape[0] in (1, 2)


def test_wav_speech(speech: Path) -> None:
    loaded = load_audio_file(speech)
    seconds = _expected_seconds(speech)
    _check_speech(loaded, seconds)
    assert loaded.sample_rate == 22050 and loaded.channels == 1
    assert loaded.original_waveform.shape == (1, round(seconds * 22050))
    assert "speech.wav" in loaded.source


@pytest.mark.parametrize("suffix,args", [("mp3", ()), ("flac", ()), ("m4a", ("-c:a", "aac")), ("ogg", ())])
def test_compressed_formats(speech: Path, tmp_path: Path, suffix: str, args: tuple[str, ...]) -> None:
    converted = _ffmpeg(speech, tmp_path / f"speech.{suffix}", *args)
    loaded = load_audio_file(converted)
    reference = load_audio_file(speech)
    _check_speech(loaded, _expected_seconds(speech), tolerance=0.12)
    # The codecs keep the speech: strong correlation with the wav over the common part (mp3/aac add delay).
    n = min(len(loaded.waveform), len(reference.waveform))
    best = max(
        abs(np.corrcoef(loaded.waveform[shift:n], reference.waveform[: n - shift])[0, 1])
        for shift in range(0, 2000, 16)
    )
    assert best > 0.8


@pytest.mark.parametrize("codec", ["pcm_f32le", "pcm_f64le", "pcm_u8"])
def test_float_and_8bit_wav(speech: Path, tmp_path: Path, codec: str) -> None:
    # ffmpeg writes float wavs with a WAVE_FORMAT_EXTENSIBLE header, which pydub alone misreads as integers.
    converted = _ffmpeg(speech, tmp_path / f"speech_{codec}.wav", "-c:a", codec)
    loaded = load_audio_file(converted)
    reference = load_audio_file(speech)
    assert np.corrcoef(loaded.waveform, reference.waveform)[0, 1] > 0.999
    assert abs(np.abs(loaded.waveform).max() - np.abs(reference.waveform).max()) < 0.02


@pytest.mark.parametrize("rate,args", [(8000, ()), (192000, ("-c:a", "pcm_s24le"))])
def test_extreme_sample_rates(speech: Path, tmp_path: Path, rate: int, args: tuple[str, ...]) -> None:
    converted = _ffmpeg(speech, tmp_path / f"speech_{rate}.wav", "-ar", str(rate), *args)
    loaded = load_audio_file(converted)
    assert loaded.sample_rate == rate
    _check_speech(loaded, _expected_seconds(speech))


def test_six_channels_written_with_numpy(tmp_path: Path) -> None:
    rate, seconds = 48000, 1.5
    t = np.arange(int(rate * seconds)) / rate
    voice = 0.5 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    channels = np.zeros((6, t.size))
    channels[2] = voice  # dialogue in the centre channel, like a film mix
    channels[3] = 0.9 * np.sin(2 * np.pi * 40 * t)  # LFE rumble must not reach lip sync
    path = tmp_path / "surround.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(6)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((channels.T * 32767).astype("<i2").tobytes())
    loaded = load_audio_file(path)
    assert loaded.channels == 6 and loaded.original_waveform.shape == (2, t.size)
    assert np.allclose(loaded.original_waveform[0], loaded.original_waveform[1], atol=1e-4)
    assert any("6 audio channels" in note for note in loaded.notes)
    spectrum = np.abs(np.fft.rfft(loaded.waveform))
    freqs = np.fft.rfftfreq(loaded.waveform.size, 1 / 16000)
    assert spectrum[np.argmin(abs(freqs - 220))] > 20 * spectrum[np.argmin(abs(freqs - 40))]


def test_comfy_audio_dict_batch_and_stereo(speech: Path) -> None:
    mono = load_audio_file(speech).original_waveform
    stereo = np.stack([mono[0], 0.5 * mono[0]])
    batch = torch.from_numpy(np.stack([stereo, np.zeros_like(stereo)]))
    loaded = audio_from_comfy({"waveform": batch, "sample_rate": 22050})
    assert loaded.channels == 2 and loaded.sample_rate == 22050
    assert any("batch of 2" in note for note in loaded.notes)
    np.testing.assert_allclose(loaded.original_waveform, stereo, atol=1e-6)
    _check_speech(loaded, _expected_seconds(speech))


def test_comfy_audio_bfloat16_and_bad_shapes() -> None:
    t = torch.linspace(0, 1, 16000)
    loaded = audio_from_comfy(
        {"waveform": (0.3 * torch.sin(2 * torch.pi * 200 * t))[None, None].bfloat16(), "sample_rate": 16000}
    )
    assert loaded.waveform.dtype == np.float32 and loaded.waveform.shape == (16000,)
    with pytest.raises(BadAudioError, match="not a ComfyUI AUDIO"):
        audio_from_comfy({"samples": t})
    with pytest.raises(BadAudioError, match="shape"):
        audio_from_comfy({"waveform": torch.zeros(0, 1, 10), "sample_rate": 16000})


def test_fit_duration_auto_trim_pad(speech: Path) -> None:
    loaded = load_audio_file(speech)
    same, message = fit_duration(loaded, None)
    assert same is loaded and "whole audio" in message
    assert fit_duration(loaded, 0)[0] is loaded
    short, message = fit_duration(loaded, 1.0)
    assert short.waveform.shape == (16000,) and short.duration_s == 1.0
    assert short.original_waveform.shape == (1, 22050)
    assert "Trimmed" in message and "1.00 s" in message
    long_, message = fit_duration(loaded, loaded.duration_s + 2.0)
    assert "Padded" in message and "silence" in message
    assert long_.waveform.shape[0] == round((loaded.duration_s + 2.0) * 16000)
    assert np.all(long_.waveform[-16000:] == 0)
    np.testing.assert_array_equal(long_.waveform[: loaded.waveform.shape[0]], loaded.waveform)
    with pytest.raises(BadInputError, match="duration"):
        fit_duration(loaded, -1.0)
    with pytest.raises(BadInputError, match="shorter than one generated frame"):
        fit_duration(loaded, 0.01)


def test_zero_byte_and_corrupt_and_unsupported(tmp_path: Path, speech: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(BadAudioError, match="empty"):
        load_audio_file(empty)
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(b"\x00\x01garbage" * 300)
    with pytest.raises(BadAudioError, match="Could not decode") as info:
        load_audio_file(corrupt)
    assert info.value.fix
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(speech.read_bytes()[:30])
    with pytest.raises(BadAudioError):
        load_audio_file(truncated)
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(BadAudioError, match="not an audio format"):
        load_audio_file(image)
    with pytest.raises(BadAudioError, match="does not exist"):
        load_audio_file(tmp_path / "missing.wav")
    silent_video = tmp_path / "novoice.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=c=red:s=64x64:d=1",
            "-pix_fmt",
            "yuv420p",
            str(silent_video),
        ],
        check=True,
    )
    with pytest.raises(BadAudioError, match="has no audio track"):
        load_audio_file(silent_video)


def _write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_too_short_silent_and_nan(tmp_path: Path) -> None:
    tone = 0.5 * np.sin(np.arange(16000) / 5.0)
    with pytest.raises(BadAudioError, match="too short"):
        load_audio_file(_write_wav(tmp_path / "short.wav", tone[:800]))
    ok = load_audio_file(_write_wav(tmp_path / "ok.wav", tone[:1600]))
    assert any("only 0.10 s" in note for note in ok.notes)
    with pytest.raises(BadAudioError, match="silent"):
        load_audio_file(_write_wav(tmp_path / "silent.wav", np.zeros(32000)))
    broken = torch.tensor(tone, dtype=torch.float32)[None, None].clone()
    broken[0, 0, 10:13] = float("nan")
    broken[0, 0, 20] = float("inf")
    with pytest.raises(BadAudioError, match="4 NaN or infinite"):
        audio_from_comfy({"waveform": broken, "sample_rate": 16000})


def test_duration_cap(tmp_path: Path) -> None:
    tone = (0.3 * np.sin(np.arange(16000 * 3) / 5.0)).astype(np.float32)
    path = _write_wav(tmp_path / "long.wav", tone)
    with pytest.raises(BadAudioError, match="over the 2 s limit") as info:
        load_audio_file(path, max_duration_s=2.0)
    assert "segments" in info.value.fix and "max audio seconds" in info.value.fix
    with pytest.raises(BadAudioError, match="limit"):
        audio_from_comfy({"waveform": torch.from_numpy(tone)[None, None], "sample_rate": 16000}, max_duration_s=2)
    assert load_audio_file(path, max_duration_s=None).duration_s == 3.0


def test_big_file_is_refused_from_its_header(tmp_path: Path) -> None:
    # 100 s at 48 kHz is 9.6 MB: over the size where ffprobe's header duration is checked before decoding.
    path = _write_wav(tmp_path / "hour.wav", np.zeros(48000 * 100), rate=48000)
    with pytest.raises(BadAudioError, match="100.0 s long, over the 60 s limit"):
        load_audio_file(path, max_duration_s=60)


def _cut_in_half(source: Path, target: Path) -> tuple[float, float]:
    """Copy a wav keeping its header but only the first half of its samples (an interrupted copy); returns the
    seconds the header promises and the seconds left."""
    data = source.read_bytes()
    fmt = data.index(b"fmt ") + 8
    rate, block = struct.unpack_from("<I", data, fmt + 4)[0], struct.unpack_from("<H", data, fmt + 12)[0]
    data_body = data.index(b"data") + 8
    frames = struct.unpack_from("<I", data, data_body - 4)[0] // block
    assert len(data) >= data_body + frames * block  # the source is complete
    kept = frames // 2
    target.write_bytes(data[: data_body + kept * block])
    return frames / rate, kept / rate


@pytest.mark.parametrize("codec", [None, "pcm_f32le"])
def test_truncated_wav_is_used_and_reported(speech: Path, tmp_path: Path, codec: str | None) -> None:
    # FFmpeg decodes what is there without a word (and reports the shortened length for int16): the header tells.
    source = speech if codec is None else _ffmpeg(speech, tmp_path / "float.wav", "-c:a", codec)
    assert load_audio_file(source).notes == ()
    promised, left = _cut_in_half(source, tmp_path / "cut.wav")
    loaded = load_audio_file(tmp_path / "cut.wav")
    _check_speech(loaded, left)
    truncation = [note for note in loaded.notes if "cut short" in note]
    assert len(truncation) == 1, loaded.notes
    assert f"promises {promised:.2f} s" in truncation[0] and f"only {left:.2f} s" in truncation[0]
    assert "cut.wav" in truncation[0] and "again" in truncation[0]
    # Through ComfyUI: our Load Audio node puts the notes in the AUDIO dict, the generator reads them back once.
    audio = {"waveform": torch.from_numpy(loaded.original_waveform)[None], "sample_rate": loaded.sample_rate,
             AUDIO_NOTES_KEY: list(loaded.notes)}
    assert audio_from_comfy(audio).notes == loaded.notes
    assert fit_duration(audio_from_comfy(audio), 1.0)[0].notes == loaded.notes


def test_streamed_wav_size_is_not_truncation(speech: Path, tmp_path: Path) -> None:
    # Streaming writers leave 0xFFFFFFFF as the data size: the data runs to the end of the file, nothing is lost.
    data = bytearray(speech.read_bytes())
    size_at = data.index(b"data") + 4
    data[size_at : size_at + 4] = (0xFFFFFFFF).to_bytes(4, "little")
    streamed = tmp_path / "streamed.wav"
    streamed.write_bytes(bytes(data))
    loaded = load_audio_file(streamed)
    _check_speech(loaded, _expected_seconds(speech))
    assert not any("cut short" in note for note in loaded.notes)
