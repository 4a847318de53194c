"""The official Sonic pipeline, imported at run time from ../shared/reference/sonic-official, for bench_speed.

Nothing of it is copied here: its modules are imported from that folder (or from `$SONIC_OFFICIAL_DIR`) and its
`Sonic.process` runs as written. The shims below are the smallest set that lets it run on this venv and on the
random model sets; each is a run-time patch, named and explained:

* `omegaconf` (not installed here): a stand-in whose `OmegaConf.load` reads the YAML into attributes; only
  `sonic.py`'s class-level config load uses it.
* `librosa.load` (not installed here, and the one place the inputs could differ): replaced by our PyAV decoder
  resampled to 16 kHz, so both pipelines get the very same samples.
* The YOLOv5 face detector (`yoloface_v5m.pt` is not part of the random sets): `face_det` answers with the box
  our detector finds, in the official (x, y, w, h) format, so both pipelines use the same face box.
* `imageio.get_writer` (the official video writer): without the imageio-ffmpeg plugin imageio falls back to its
  PyAV plugin, which needs a codec named and would read one (H, W, 3) frame as a batch; the stand-in names
  libx264 (the codec imageio-ffmpeg would pick) and one frame per call.
* `Sonic.__init__` runs as written, but its fixed `checkpoints/` folder is a link to the model folder given, its
  `from_pretrained(..., variant="fp16")` calls ignore the variant (the UNet is built from its config: every weight
  comes from Sonic/unet.pth), and the adapters take the checkpoint's widths (equal to the official constants on
  the full-size set).
* The initial noise: the official pipeline draws it from the global generator; the bench passes the same unit
  noise our sampler draws through the pipeline's own `latents` argument, so the outputs can be compared.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("bench_speed.official")

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_ENV = "SONIC_OFFICIAL_DIR"
DEFAULT_OFFICIAL = REPO.parent / "shared" / "reference" / "sonic-official"
OFFICIAL_MODULES = ("sonic", "src")


def official_root() -> Path:
    """Where the official code is read from: $SONIC_OFFICIAL_DIR, else ../shared/reference/sonic-official."""
    return Path(os.environ.get(OFFICIAL_ENV) or DEFAULT_OFFICIAL)


def official_missing_reason(root: Path) -> str | None:
    """None when the official code is there; else why the official side cannot run."""
    if not (root / "sonic.py").is_file() or not (root / "src" / "pipelines" / "pipeline_sonic.py").is_file():
        return (f"the official Sonic code was not found at {root} (sonic.py and src/ expected); set "
                f"{OFFICIAL_ENV} to a checkout of the official Sonic repository or place it at ../shared/reference/"
                "sonic-official; the official side was skipped")
    return None


class _Config(types.SimpleNamespace):
    """The attribute view of sonic.yaml that `sonic.py` reads and writes."""


def _omegaconf_stand_in() -> types.ModuleType:
    import yaml

    module = types.ModuleType("omegaconf")

    class OmegaConf:  # noqa: D401 - the one method sonic.py calls
        @staticmethod
        def load(path: str) -> _Config:
            return _Config(**yaml.safe_load(Path(path).read_text(encoding="utf-8")))

    module.OmegaConf = OmegaConf  # type: ignore[attr-defined]
    return module


def _librosa_stand_in() -> types.ModuleType:
    """`librosa.load(path, sr=16000)` through our decoder: the same 16 kHz samples our pipeline gets."""
    from sonic_guard.inputs.audio_loading import load_audio_file

    module = types.ModuleType("librosa")

    def load(path: str, sr: int = 16000) -> tuple[np.ndarray, int]:
        if sr != 16000:
            raise ValueError(f"the bench's librosa stand-in decodes at 16 kHz only (asked for {sr})")
        return load_audio_file(Path(path), max_duration_s=None).waveform.astype(np.float32), 16000

    module.load = load  # type: ignore[attr-defined]
    return module


def _imageio_with_codec() -> types.ModuleType:
    import imageio

    module = types.ModuleType("imageio")

    def get_writer(path: str, **kwargs: Any) -> Any:
        return imageio.get_writer(path, codec="libx264", is_batch=False, **kwargs)

    module.get_writer = get_writer  # type: ignore[attr-defined]
    return module


@contextlib.contextmanager
def official_import_path(root: Path) -> Iterator[types.ModuleType]:
    """`sonic` imported from `root` with the shims in place; the official modules are forgotten afterwards so
    that `src` does not shadow anything for the rest of the process."""
    added: list[str] = []
    for name, make in (("omegaconf", _omegaconf_stand_in), ("librosa", _librosa_stand_in)):
        if importlib.util.find_spec(name) is None and name not in sys.modules:
            sys.modules[name] = make()
            added.append(name)
    sys.path.insert(0, str(root))
    try:
        sonic = importlib.import_module("sonic")
        # Always our decoder, even where librosa is installed: its resampler would give other samples.
        importlib.import_module("src.dataset.test_preprocess").librosa = _librosa_stand_in()
        if importlib.util.find_spec("imageio_ffmpeg") is None:
            importlib.import_module("src.utils.util").imageio = _imageio_with_codec()
        yield sonic
    finally:
        sys.path.remove(str(root))
        for name in list(sys.modules):
            if name.split(".")[0] in OFFICIAL_MODULES or name in added:
                del sys.modules[name]


class SameFaceBox:
    """The official `AlignImage` call: (_, _, [(x, y, w, h)]) of the box our detector finds (largest face)."""

    def __init__(self) -> None:
        from sonic_guard.face import make_face_detector

        self.detector = make_face_detector(None)

    def __call__(self, image_bgr: np.ndarray, maxface: bool = True) -> tuple[None, None, list[list[float]]]:
        from sonic_guard.conditioning.reference_image import detect_main_face

        face, _, _ = detect_main_face(np.ascontiguousarray(image_bgr[:, :, ::-1]), self.detector)
        return None, None, [[float(face.x1), float(face.y1), float(face.width), float(face.height)]]


class NoiseInjectingPipe:
    """Stands in for `SonicPipeline` in `sonic.test`: the same call with `latents` set to `noise(frames, h, w)`."""

    def __init__(self, pipe: Any, noise: Callable[[int, int, int], torch.Tensor], clock: StageTimer) -> None:
        self.pipe, self.noise, self.clock = pipe, noise, clock

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        unit = self.noise(kwargs["num_frames"], kwargs["height"] // 8, kwargs["width"] // 8)
        kwargs["latents"] = unit[None].to(self.pipe.device, self.pipe.unet.dtype)
        with self.clock.stage("pipe_call"):
            return self.pipe(*args, **kwargs)


class StageTimer:
    """Wall seconds per named stage, synchronised with the device so GPU work is counted where it ran."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.sync()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name):
                return function(*args, **kwargs)

        return call


def _adapter_widths(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(intermediate_dim, output_dim) of an adapter checkpoint: 1024, 1024 (audio2token) on the full-size set."""
    return int(state["proj1.weight"].shape[0]), int(state["proj3.weight"].shape[0])


def _without_variant(cls: type) -> type:
    """`cls` whose from_pretrained ignores `variant` (the random sets hold no fp16 variant files)."""

    class Loader:
        @staticmethod
        def from_pretrained(path: str, subfolder: str | None = None, variant: str | None = None) -> Any:
            return cls.from_pretrained(path, subfolder=subfolder)

    return Loader


def _unet_from_config(cls: type) -> type:
    """The official UNet class built from its config only: every weight then comes from Sonic/unet.pth."""

    class Loader:
        @staticmethod
        def from_pretrained(path: str, subfolder: str | None = None, variant: str | None = None) -> Any:
            return cls.from_config(cls.load_config(path, subfolder=subfolder))

    return Loader


def _sized_like(cls: type, checkpoint: Path, channels: int) -> Callable[..., Any]:
    """`cls(**official arguments)` with the widths the checkpoint has (the official constants are the full-size
    widths; the small CPU set is narrower)."""
    state = torch.load(checkpoint, map_location="cpu")
    hidden, out = _adapter_widths(state)

    def build(**kwargs: Any) -> Any:
        kwargs.update(channels=channels, intermediate_dim=hidden)
        if "clip_channels" in kwargs:
            kwargs["clip_channels"] = int(state["proj1.weight"].shape[1]) - kwargs["seq_len"] * channels
        else:
            kwargs["output_dim"] = out // kwargs["context_tokens"]
        return cls(**kwargs)

    return build


DTYPE_NAMES = {torch.float16: "fp16", torch.float32: "fp32", torch.bfloat16: "bf16"}


def build_official(sonic: types.ModuleType, model_root: Path, device: torch.device, dtype: torch.dtype,
                   clock: StageTimer, noise: Callable[[int, int, int], torch.Tensor]) -> Any:
    """`Sonic(...)` built by its own __init__ from the files under `model_root`, with run-time patches only: its
    fixed `checkpoints/` folder points at `model_root`, no fp16 variant files are asked for, the adapters take the
    checkpoint's widths, the face detector is `SameFaceBox`; then stages are timed and the noise injected."""
    base = Path(tempfile.mkdtemp(prefix="sonic-official-base-"))
    (base / "checkpoints").symlink_to(model_root.resolve(), target_is_directory=True)
    whisper_width = int(json.loads((model_root / "whisper-tiny" / "config.json").read_text())["d_model"])
    patches = {
        "BASE_DIR": str(base),
        "AutoencoderKLTemporalDecoder": _without_variant(sonic.AutoencoderKLTemporalDecoder),
        "CLIPVisionModelWithProjection": _without_variant(sonic.CLIPVisionModelWithProjection),
        "UNetSpatioTemporalConditionModel": _unet_from_config(sonic.UNetSpatioTemporalConditionModel),
        "AudioProjModel": _sized_like(sonic.AudioProjModel, model_root / "Sonic" / "audio2token.pth", whisper_width),
        "Audio2bucketModel": _sized_like(sonic.Audio2bucketModel, model_root / "Sonic" / "audio2bucket.pth",
                                         whisper_width),
        "AlignImage": lambda device, det_path: SameFaceBox(),
    }
    saved = {name: getattr(sonic, name) for name in patches}
    sonic.Sonic.config.weight_dtype = DTYPE_NAMES[dtype]
    try:
        for name, value in patches.items():
            setattr(sonic, name, value)
        obj = sonic.Sonic(device_id=-1 if device.type == "cpu" else (device.index or 0),
                          enable_interpolate_frame=True)
    finally:
        for name, value in saved.items():
            setattr(sonic, name, value)
        shutil.rmtree(base, ignore_errors=True)  # everything is loaded by now
    obj.rife.inference = clock.timed("interpolation", obj.rife.inference)
    obj.pipe.decode_latents = clock.timed("decode", obj.pipe.decode_latents)
    obj.pipe = NoiseInjectingPipe(obj.pipe, noise, clock)
    return obj


@contextlib.contextmanager
def timed_official_stages(sonic: types.ModuleType, clock: StageTimer) -> Iterator[None]:
    """Time the module-level steps `Sonic.process` calls (preprocess, the conditioning + pipe call, the video
    write and the ffmpeg mux) by wrapping them for the duration of one run."""
    names = {"image_audio_to_tensor": "preprocess", "test": "test_call", "save_videos_grid": "encode"}
    saved = {name: getattr(sonic, name) for name in names}
    system = os.system
    for name, stage in names.items():
        setattr(sonic, name, clock.timed(stage, saved[name]))
    os.system = clock.timed("mux", system)
    try:
        yield
    finally:
        os.system = system
        for name, function in saved.items():
            setattr(sonic, name, function)


def official_stage_seconds(seconds: dict[str, float]) -> dict[str, float]:
    """The official run's seconds in our stage names. `test()` holds the whisper/adapter conditioning and the
    pipe call; the pipe call holds the reference encodes, sampling and decode."""
    pipe = seconds.get("pipe_call", 0.0)
    decode = seconds.get("decode", 0.0)
    return {
        "preprocess": round(seconds.get("preprocess", 0.0), 4),
        "audio_features": round(seconds.get("test_call", 0.0) - pipe, 4),
        "sampling": round(pipe - decode, 4),  # includes the CLIP and VAE encodes of the reference
        "decode": round(decode, 4),
        "interpolation": round(seconds.get("interpolation", 0.0), 4),
        "encode": round(seconds.get("encode", 0.0) + seconds.get("mux", 0.0), 4),
    }
