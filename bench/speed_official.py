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
* `Sonic.__init__` loads from fixed paths with `variant="fp16"` and full-size adapter widths: the bench builds
  the same objects (the official classes) from the model folder it is given, with the adapter widths read from the
  checkpoint (equal to the official constants on the full-size set).
* The initial noise: the official pipeline draws it from the global generator; the bench passes the same unit
  noise our sampler draws through the pipeline's own `latents` argument, so the outputs can be compared.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
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
                f"{OFFICIAL_ENV} to a checkout of github.com/jixiaozhong/Sonic or place it at ../shared/reference/"
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


def build_official(sonic: types.ModuleType, model_root: Path, device: torch.device, dtype: torch.dtype,
                   clock: StageTimer, noise: Callable[[int, int, int], torch.Tensor]) -> Any:
    """A `Sonic` object as its __init__ makes it, from the official classes and the files under `model_root`."""
    from diffusers import AutoencoderKLTemporalDecoder
    from diffusers.schedulers import EulerDiscreteScheduler
    from transformers import AutoFeatureExtractor, CLIPVisionModelWithProjection, WhisperModel

    base = importlib.import_module("src.models.base.unet_spatio_temporal_condition")
    audio_proj = importlib.import_module("src.models.audio_adapter.audio_proj")
    audio_bucket = importlib.import_module("src.models.audio_adapter.audio_to_bucket")
    rife_module = importlib.import_module("src.utils.RIFE.RIFE_HDv3")

    svd, whisper_dir, sonic_dir = (model_root / "stable-video-diffusion-img2vid-xt", model_root / "whisper-tiny",
                                   model_root / "Sonic")
    obj = sonic.Sonic.__new__(sonic.Sonic)
    obj.config = _Config(**vars(sonic.Sonic.config))  # process() writes into it: not the class's copy
    obj.config.use_interframe = True
    vae = AutoencoderKLTemporalDecoder.from_pretrained(svd, subfolder="vae")
    scheduler = EulerDiscreteScheduler.from_pretrained(svd, subfolder="scheduler")
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(svd, subfolder="image_encoder")
    # The official UNet class from its config; every weight then comes from Sonic/unet.pth (strict), as in __init__.
    unet_config = json.loads((svd / "unet" / "config.json").read_text(encoding="utf-8"))
    unet = base.UNetSpatioTemporalConditionModel.from_config(unet_config)
    base.add_ip_adapters(unet, [32], [obj.config.ip_audio_scale])
    unet.load_state_dict(torch.load(sonic_dir / "unet.pth", map_location="cpu"), strict=True)
    whisper = WhisperModel.from_pretrained(whisper_dir).to(device).eval()
    whisper.requires_grad_(False)
    channels = int(whisper.config.d_model)
    token_state = torch.load(sonic_dir / "audio2token.pth", map_location="cpu")
    bucket_state = torch.load(sonic_dir / "audio2bucket.pth", map_location="cpu")
    token_hidden, token_out = _adapter_widths(token_state)
    bucket_hidden, _ = _adapter_widths(bucket_state)
    clip_channels = int(bucket_state["proj1.weight"].shape[1]) - 50 * channels
    audio2token = audio_proj.AudioProjModel(seq_len=10, blocks=5, channels=channels, intermediate_dim=token_hidden,
                                            output_dim=token_out // 32, context_tokens=32)
    audio2bucket = audio_bucket.Audio2bucketModel(seq_len=50, blocks=1, channels=channels,
                                                  clip_channels=clip_channels, intermediate_dim=bucket_hidden,
                                                  output_dim=1, context_tokens=2)
    audio2token.load_state_dict(token_state, strict=True)
    audio2bucket.load_state_dict(bucket_state, strict=True)
    rife = rife_module.RIFEModel(device=device)
    rife.load_model(str(model_root / "RIFE"))
    rife.inference = clock.timed("interpolation", rife.inference)
    image_encoder.to(dtype)
    vae.to(dtype)
    unet.to(dtype)
    pipe = importlib.import_module("src.pipelines.pipeline_sonic").SonicPipeline(
        unet=unet, image_encoder=image_encoder, vae=vae, scheduler=scheduler)
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.decode_latents = clock.timed("decode", pipe.decode_latents)
    obj.pipe = NoiseInjectingPipe(pipe, noise, clock)
    obj.whisper, obj.image_encoder = whisper, image_encoder
    obj.audio2token, obj.audio2bucket = audio2token.to(device), audio2bucket.to(device)
    obj.feature_extractor = AutoFeatureExtractor.from_pretrained(whisper_dir)
    obj.face_det = SameFaceBox()
    obj.rife = rife
    obj.device = "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"
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
