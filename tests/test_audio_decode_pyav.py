"""Audio decodes without the ffmpeg programs: real espeak-ng speech encoded by PyAV in mp3, m4a (aac), ogg (opus),
flac and wav, loaded in a Python whose PATH holds nothing but python itself (a Windows portable install)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng for real speech")

# codec, container suffix, rate the encoder runs at, correlation floor with the wav (lossy codecs lose some).
FORMATS = {
    "mp3": ("libmp3lame", "mp3", 22050, 0.95),
    "m4a": ("aac", "m4a", 22050, 0.95),
    "ogg": ("libopus", "ogg", 48000, 0.95),
    "flac": ("flac", "flac", 22050, 0.9999),
    "wav": ("pcm_s16le", "wav", 22050, 0.9999),
}


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as handle:
        data = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
        return data.astype(np.float32) / 32768.0, handle.getframerate()


def _encode(samples: np.ndarray, rate: int, codec: str, path: Path, out_rate: int) -> None:
    """Encode mono float samples with PyAV; a resampler adapts format and rate to what the encoder takes."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=out_rate, layout="mono")
        resampler = av.AudioResampler(format=stream.codec_context.codec.audio_formats[0].name, layout="mono",
                                      rate=out_rate, frame_size=stream.codec_context.frame_size or 1024)
        pts = 0
        for start in range(0, samples.size, 4096):
            frame = av.AudioFrame.from_ndarray(samples[None, start : start + 4096].copy(), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
            pts += frame.samples
            for converted in resampler.resample(frame):
                container.mux(stream.encode(converted))
        for converted in resampler.resample(None):
            container.mux(stream.encode(converted))
        container.mux(stream.encode(None))


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("pyav")
    speech = folder / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), "Hello, this is a lip sync test without ffmpeg."], check=True)
    samples, rate = _read_wav(speech)
    files = {}
    for name, (codec, suffix, out_rate, _) in FORMATS.items():
        files[name] = folder / f"speech_{name}.{suffix}"
        _encode(samples, rate, codec, files[name], out_rate)
    return speech, files


_LOADER = """
import json, shutil, sys
from pathlib import Path
import numpy as np
from sonic_guard.inputs.audio_loading import load_audio_file
found = {tool: shutil.which(tool) for tool in ("ffmpeg", "ffprobe", "avconv")}
out = {"found": found}
for arg in sys.argv[1:]:
    loaded = load_audio_file(Path(arg))
    np.save(arg + ".16k.npy", loaded.waveform)
    out[arg] = {"duration": loaded.duration_s, "rate": loaded.sample_rate, "notes": list(loaded.notes)}
out["pydub_imported"] = "pydub" in sys.modules
print(json.dumps(out))
"""


def _load_without_ffmpeg(paths: list[Path], tmp_path: Path) -> dict:
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)  # the only program a bare PATH finds
    env = {key: value for key, value in os.environ.items() if key not in ("PATH", "PYTHONPATH")}
    env["PATH"] = str(bare)
    result = subprocess.run(
        [sys.executable, "-c", _LOADER, *map(str, paths)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _best_correlation(a: np.ndarray, b: np.ndarray, max_shift: int = 3000) -> float:
    """Encoders add a start delay (mp3/aac priming): best |correlation| over shifts of `a` against `b`."""
    n = min(a.size, b.size) - max_shift
    return max(abs(float(np.corrcoef(a[shift : shift + n], b[:n])[0, 1])) for shift in range(0, max_shift, 8))


def _envelope(x: np.ndarray, window: int = 800) -> np.ndarray:
    frames = x[: x.size // window * window].reshape(-1, window)
    return np.sqrt((frames**2).mean(axis=1))


def test_every_format_decodes_without_ffmpeg_on_path(encoded: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    speech, files = encoded
    report = _load_without_ffmpeg([speech, *files.values()], tmp_path)
    assert report["found"] == {"ffmpeg": None, "ffprobe": None, "avconv": None}  # the test is what it claims
    assert report["pydub_imported"] is False  # nothing can shell out to the ffmpeg programs
    samples, rate = _read_wav(speech)
    seconds = samples.size / rate
    assert seconds > 2.0
    reference = np.load(str(speech) + ".16k.npy")
    assert abs(report[str(speech)]["duration"] - seconds) < 1e-3
    for name, path in files.items():
        info = report[str(path)]
        codec, _, out_rate, floor = FORMATS[name]
        assert info["rate"] == out_rate, name
        # Lossy codecs pad to whole frames and add priming samples: up to ~0.1 s more; lossless ones are exact.
        assert -0.01 < info["duration"] - seconds < (0.12 if floor < 0.99 else 1e-3), (name, info["duration"])
        assert info["notes"] == [], name
        decoded = np.load(str(path) + ".16k.npy")
        correlation = _best_correlation(decoded, reference)
        assert correlation > floor, (name, correlation)
        # The loudness over time follows the speech (syllables in the same places, same level).
        shift = int(np.argmax(np.correlate(_envelope(decoded), _envelope(reference), "full"))) - (
            _envelope(reference).size - 1)
        envelope, ref_env = _envelope(decoded), _envelope(reference)
        aligned = envelope[max(shift, 0) :][: ref_env.size]
        assert np.corrcoef(aligned, ref_env[: aligned.size])[0, 1] > 0.95, name
        assert 0.8 < aligned.max() / ref_env.max() < 1.25, name


def test_truncated_wav_noted_without_ffmpeg(encoded: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    speech = encoded[0]
    data = speech.read_bytes()
    body = data.index(b"data") + 8
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: body + (len(data) - body) // 4 * 2])
    report = _load_without_ffmpeg([cut], tmp_path)
    notes = report[str(cut)]["notes"]
    assert any("cut short" in note and "cut.wav" in note for note in notes), notes


def test_nan_in_a_float_wav_is_refused(tmp_path: Path) -> None:
    # Decoding to float keeps NaN/Inf as they are, so the check after decoding sees them (no silent clicks).
    from sonic_guard.errors import BadAudioError
    from sonic_guard.inputs.audio_loading import load_audio_file

    tone = (0.5 * np.sin(np.arange(16000) / 5.0)).astype(np.float32)
    tone[100:103] = np.nan
    tone[200] = np.inf
    path = tmp_path / "float_nan.wav"
    _encode(tone, 16000, "pcm_f32le", path, 16000)
    with pytest.raises(BadAudioError, match="4 NaN or infinite"):
        load_audio_file(path)
