"""Bad inputs for the hardening tests and the reliability bench, each meant for a real ComfyUI server.

A case writes its files into the server's base folder and returns an API prompt; hardening_server.evaluate runs
it and judges the answer. "accepted" cases (an RGBA photo, 6-channel audio...) are usable inputs that must run.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from comfy_host import REPO

SPEECH_TEXT = "Hello there. This is Sonic Guard speaking a short sentence for the test."
QUICK = {"min_resolution": 128, "inference_steps": 1, "interpolation": "none", "duration": 0.5,
         "lip_sync_correction": False, "smooth_motion": 0.0, "filename_prefix": "hardening/run"}


def quick_prompt(image: str = "portrait.png", audio: str = "speech.wav", model: str = "tiny-sonic",
                 **generator_inputs: object) -> dict:
    """The example workflow made as cheap as it gets: 0.5 s of audio, 128 px, 1 step, no interpolation."""
    prompt = json.loads((REPO / "workflows" / "sonic_basic_api.json").read_text())
    prompt["1"]["inputs"].update({"model_folder": model, "load_rife": False})
    prompt["2"]["inputs"]["image"] = image
    prompt["3"]["inputs"]["audio_file"] = audio
    prompt["4"]["inputs"].update({**QUICK, **generator_inputs})
    return prompt


# --- real inputs ---------------------------------------------------------------------------------------------
def portrait() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def save_image(array_or_image: object, path: Path, **save_args: object) -> str:
    from PIL import Image

    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    image.save(path, **save_args)
    return path.name


def speak(path: Path, text: str = SPEECH_TEXT) -> Path:
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return path


def sox(source: Path, target: Path, *effects: str) -> str:
    subprocess.run(["sox", str(source), str(target), *effects], check=True, capture_output=True)
    return target.name


def write_float_wav(path: Path, samples: np.ndarray, rate: int) -> str:
    """A 32-bit float wav (WAVE_FORMAT_IEEE_FLOAT), written by hand so NaN and Inf survive."""
    data = np.asarray(samples, dtype="<f4").tobytes()
    header = (b"RIFF" + (36 + len(data)).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
              + (3).to_bytes(2, "little") + (1).to_bytes(2, "little") + rate.to_bytes(4, "little")
              + (rate * 4).to_bytes(4, "little") + (4).to_bytes(2, "little") + (32).to_bytes(2, "little")
              + b"data" + len(data).to_bytes(4, "little"))
    path.write_bytes(header + data)
    return path.name


def write_pcm_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> str:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path.name


def cartoon_face(size: int = 512) -> np.ndarray:
    import cv2

    canvas = np.full((size, size, 3), 235, dtype=np.uint8)
    centre = (size // 2, size // 2)
    cv2.circle(canvas, centre, size // 3, (250, 210, 40), -1)
    for dx in (-size // 8, size // 8):
        cv2.circle(canvas, (centre[0] + dx, centre[1] - size // 12), size // 24, (20, 20, 20), -1)
    cv2.ellipse(canvas, (centre[0], centre[1] + size // 12), (size // 7, size // 14), 0, 0, 180, (20, 20, 20), 6)
    return canvas


class CodeRunningPickle:
    """Unpickling this (without weights_only) would create the marker file: proof that weights_only=True."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# --- the cases ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    category: str
    build: Callable[[Path], dict]  # server base folder -> prompt (writes its files there)
    accepted: bool = False  # True: a usable input that must run (converted, with a note), not be refused


def _input(base: Path, name: str) -> Path:
    return base / "input" / name


def _speech(base: Path) -> Path:
    return base / "input" / "speech.wav"


def _model_copy(base: Path, name: str, change: Callable[[Path], None]) -> dict:
    source = base / "models" / "sonic" / "tiny-sonic"
    target = base / "models" / "sonic" / name
    if not target.exists():
        shutil.copytree(source, target)
        change(target)
    return quick_prompt(model=name)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _wrong_shapes(path: Path) -> None:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    name = next(iter(state))
    state[name] = torch.zeros(*(s + 1 for s in state[name].shape))
    torch.save(state, path)


def _malicious(path: Path) -> None:
    marker = path.parent / "pickle_code_ran"
    with path.open("wb") as handle:
        pickle.dump({"weight": CodeRunningPickle(marker)}, handle)


def _gradient() -> np.ndarray:
    ramp = np.linspace(0, 255, 512, dtype=np.float32)
    return np.stack([np.add.outer(ramp, ramp) / 2] * 3, axis=-1).astype(np.uint8)


def _escape_link(base: Path) -> dict:
    outside = base / "outside"
    outside.mkdir(exist_ok=True)
    shutil.copy(_speech(base), outside / "secret.wav")
    link = _input(base, "hard_escape.wav")
    if not link.is_symlink():
        link.symlink_to(outside / "secret.wav")
    return quick_prompt(audio="hard_escape.wav")


def _model_link_outside(base: Path) -> dict:
    # A complete model folder outside models/sonic, reached through a symlink inside it.
    outside = base / "outside" / "models-elsewhere"
    if not outside.exists():
        shutil.copytree(base / "models" / "sonic" / "tiny-sonic", outside)
    link = base / "models" / "sonic" / "hard-link-out"
    if not link.is_symlink():
        link.symlink_to(outside, target_is_directory=True)
    return quick_prompt(model="hard-link-out")


def _image(name: str, make: Callable[[], object], **save: object) -> Callable[[Path], dict]:
    def build(base: Path) -> dict:
        return quick_prompt(image=save_image(make(), _input(base, name), **save))
    return build


def _audio(make: Callable[[Path], str]) -> Callable[[Path], dict]:
    def build(base: Path) -> dict:
        return quick_prompt(audio=make(base))
    return build


def _params(**inputs: object) -> Callable[[Path], dict]:
    return lambda base: quick_prompt(**inputs)


def _bytes_file(name: str, data: bytes) -> Callable[[Path], str]:
    def make(base: Path) -> str:
        _input(base, name).write_bytes(data)
        return name
    return make


def _cmyk():
    from PIL import Image

    return Image.fromarray(portrait()).convert("CMYK")


def _rgba() -> np.ndarray:
    rgba = np.dstack([portrait(), np.full(portrait().shape[:2], 255, np.uint8)])
    rgba[:64, :, 3] = 0  # a transparent band at the top
    return rgba


def _eight_k() -> np.ndarray:
    import cv2

    return cv2.resize(portrait(), (7680, 4320), interpolation=cv2.INTER_LINEAR)


def _two_faces() -> np.ndarray:
    return np.concatenate([portrait(), portrait()[:, ::-1]], axis=1)


def _tone_with(value: float) -> Callable[[Path], str]:
    def make(base: Path) -> str:
        samples = 0.3 * np.sin(np.linspace(0, 2000, 16000)).astype(np.float32)
        samples[100:110] = value
        return write_float_wav(_input(base, f"hard_{'nan' if np.isnan(value) else 'inf'}.wav"), samples, 16000)
    return make


def _long_audio(base: Path) -> str:
    # 10 minutes 20 s of quiet noise: over the 600 s limit, refused before any model work.
    return sox(_speech(base), _input(base, "hard_ten_minutes.wav"), "pad", "0", "620")


CASES: tuple[Case, ...] = (
    # images
    Case("no_face", "image", _image("hard_no_face.png", _gradient)),
    Case("cartoon_face", "image", _image("hard_cartoon.png", cartoon_face)),
    Case("image_1x1", "image", _image("hard_1x1.png", lambda: np.zeros((1, 1, 3), np.uint8))),
    Case("image_32x32", "image", _image("hard_32x32.png", lambda: portrait()[::16, ::16].copy())),
    Case("image_zero_bytes", "image", lambda b: quick_prompt(image=_bytes_file("hard_empty.png", b"")(b))),
    Case("image_corrupt", "image",
         lambda b: quick_prompt(image=_bytes_file("hard_corrupt.png", b"\x89PNG\r\n\x1a\n" + os.urandom(2048))(b))),
    Case("several_faces", "image", _image("hard_two_faces.png", _two_faces), accepted=True),
    Case("rgba_unicode_name", "image", _image("hard_porträt_人像.png", _rgba), accepted=True),
    Case("grayscale", "image", _image("hard_gray.png", lambda: portrait().mean(axis=2).astype(np.uint8)),
         accepted=True),
    Case("cmyk_jpeg", "image", _image("hard_cmyk.jpg", _cmyk), accepted=True),
    Case("image_8k", "image", _image("hard_8k.png", _eight_k, compress_level=1), accepted=True),
    # audio
    Case("audio_zero_bytes", "audio", _audio(_bytes_file("hard_empty.wav", b""))),
    Case("audio_corrupt", "audio", _audio(_bytes_file("hard_corrupt.mp3", b"ID3" + os.urandom(4096)))),
    Case("audio_silent", "audio", _audio(lambda b: write_pcm_wav(_input(b, "hard_silent.wav"),
                                                                np.zeros(32000), 16000))),
    Case("audio_empty", "audio", _audio(lambda b: write_pcm_wav(_input(b, "hard_no_samples.wav"),
                                                               np.zeros(0), 16000))),
    Case("audio_nan", "audio", _audio(_tone_with(float("nan")))),
    Case("audio_inf", "audio", _audio(_tone_with(float("inf")))),
    Case("audio_ten_minutes", "audio", _audio(_long_audio)),
    Case("audio_unsupported_format", "audio", lambda b: quick_prompt(audio="portrait.png")),
    Case("audio_text_named_wav", "audio", _audio(_bytes_file("hard_text.wav", b"just some text\n" * 50))),
    Case("audio_8khz", "audio", _audio(lambda b: sox(_speech(b), _input(b, "hard_8k.wav"), "rate", "8000")),
         accepted=True),
    Case("audio_192khz_6ch_unicode", "audio",
         _audio(lambda b: sox(_speech(b), _input(b, "hard_sprecher_äöü_语音.wav"), "rate", "192000",
                              "channels", "6")), accepted=True),
    # parameters
    Case("steps_absurd", "parameters", _params(inference_steps=10**9)),
    Case("resolution_absurd", "parameters", _params(min_resolution=100_000)),
    Case("resolution_not_multiple_of_64", "parameters", _params(min_resolution=130)),
    Case("duration_negative", "parameters", _params(duration=-5.0)),
    Case("duration_too_short", "parameters", _params(duration=0.01)),
    Case("expand_ratio_nan", "parameters", _params(expand_ratio=float("nan"))),
    Case("dynamic_scale_infinite", "parameters", _params(dynamic_scale=float("inf"))),
    Case("seed_negative", "parameters", _params(seed=-1)),
    Case("interpolation_unknown", "parameters", _params(interpolation="warp9")),
    Case("filename_prefix_escape", "parameters", _params(filename_prefix="../../../tmp/sonic_escape")),
    Case("filename_prefix_absolute", "parameters", _params(filename_prefix="/tmp/sonic_escape")),
    # checkpoints
    Case("checkpoint_missing", "checkpoint",
         lambda b: _model_copy(b, "hard-missing", lambda r: (r / "Sonic" / "audio2token.pth").unlink())),
    Case("checkpoint_truncated", "checkpoint",
         lambda b: _model_copy(b, "hard-truncated", lambda r: _truncate(r / "Sonic" / "unet.pth"))),
    Case("checkpoint_wrong_shape", "checkpoint",
         lambda b: _model_copy(b, "hard-wrong-shape", lambda r: _wrong_shapes(r / "Sonic" / "audio2bucket.pth"))),
    Case("checkpoint_code_pickle", "checkpoint",
         lambda b: _model_copy(b, "hard-code-pickle", lambda r: _malicious(r / "Sonic" / "audio2token.pth"))),
    Case("model_folder_escape", "checkpoint", lambda b: quick_prompt(model="../../")),
    Case("model_folder_symlink_escape", "checkpoint", _model_link_outside),
    # paths
    Case("path_dotdot", "path", lambda b: quick_prompt(audio="../../../etc/passwd")),
    Case("path_absolute_outside", "path", lambda b: quick_prompt(audio="/etc/hostname")),
    Case("path_image_dotdot", "path", lambda b: quick_prompt(image="../../../usr/share/pixmaps/debian-logo.png")),
    Case("path_image_absolute_outside", "path", lambda b: quick_prompt(image="/etc/hostname")),
    Case("path_symlink_escape", "path", _escape_link),
    Case("path_very_long_name", "path", lambda b: quick_prompt(audio="a" * 300 + ".wav")),
    Case("path_long_name_exists", "path",
         _audio(lambda b: sox(_speech(b), _input(b, "hard_" + "ü" * 100 + ".wav"), "rate", "16000")),
         accepted=True),
)
