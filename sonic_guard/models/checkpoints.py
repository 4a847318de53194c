"""Load every Sonic model from local files, to the CPU, with strict checks and actionable errors."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from .audio_adapters import AudioTokenProjector, MotionBucketPredictor
from .checkpoint_paths import (
    UNET_FP16,
    ModelPaths,
    WhisperSearch,
    as_model_paths,
    download_hint,
    inspect_model_files,
    is_single_file,
)
from .configs import CLIP_VIT_H14_CONFIG, SVD_XT_UNET_CONFIG
from .rife import IFNet, strip_module_prefix
from .state_dicts import LOAD_ERRORS, check_state_dict, expected_shapes, load_checked, read_state_dict
from .svd_single_file import load_vae_and_clip_from_single_file
from .unet import SonicUNet, build_sonic_unet

logger = logging.getLogger(__name__)

__all__ = ["ModelPaths", "SonicModelSet", "inspect_model_files", "load_sonic_models", "read_unet_config"]

AUDIO_TOKENS = 32  # audio cross-attention tokens per frame (official)
TOKEN_WINDOW = 10  # whisper frames per token window
BUCKET_WINDOW = 50  # whisper frames per bucket window


@dataclass
class SonicModelSet:
    """Everything a Sonic run needs, loaded on the CPU: UNet, VAE and CLIP in the dtype asked for, the rest fp32."""

    unet: SonicUNet
    audio_token_projector: AudioTokenProjector
    motion_bucket_predictor: MotionBucketPredictor
    whisper_encoder: nn.Module
    feature_extractor: Any
    vae: nn.Module
    image_encoder: nn.Module
    rife: IFNet | None
    face_detector_path: Path | None
    paths: ModelPaths
    config: dict[str, Any] = field(default_factory=dict)


def _hf_error(what: str, folder: Path, searched: Path, exc: Exception, kind: str) -> CheckpointError:
    return CheckpointError(
        problem=f"The {what} in {folder} (searched {searched}) could not be loaded "
        f"({type(exc).__name__}: {str(exc)[:200]})",
        expected=f"a complete Hugging Face model folder at {folder} (config + weights)",
        fix=f"download it again: {download_hint(kind)}",
    )


def _require_dir(folder: Path, what: str, searched: Path, kind: str) -> None:
    if not folder.is_dir():
        raise CheckpointError(
            problem=f"The {what} folder {folder} was not found (searched in {searched})",
            expected=f"a folder at {folder}",
            fix=f"download it: {download_hint(kind)}",
        )


def _variant(folder: Path) -> str | None:
    """SVD-xt often ships only fp16 weights (`*.fp16.safetensors`); use that variant when it is all there is."""
    names = [p.name for p in folder.iterdir() if p.is_file()]
    weights = [n for n in names if n.endswith((".safetensors", ".bin"))]
    plain = [n for n in weights if ".fp16." not in n]
    return "fp16" if weights and not plain else None


def read_unet_config(paths: ModelPaths) -> dict[str, Any]:
    """svd/unet/config.json when present, else the built-in SVD-xt values."""
    config_path = paths.svd / "unet" / "config.json"
    if not config_path.is_file():
        logger.info("no %s; using the built-in SVD-xt UNet config", config_path)
        return dict(SVD_XT_UNET_CONFIG)
    try:
        loaded = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _hf_error("UNet config", config_path, paths.searched(config_path), exc, "unet_config") from exc
    config = dict(SVD_XT_UNET_CONFIG)
    config.update({k: v for k, v in loaded.items() if k in SVD_XT_UNET_CONFIG})
    return config


def _unet_hint(path: Path) -> str:
    if path.name != UNET_FP16:
        return download_hint("unet")
    root = path.parent.parent
    return (f"this is the fp16 conversion of unet.pth: delete {path} (the loader then reads unet.pth) or convert "
            f"again with `python -m sonic_guard.models.convert_unet {root} --force`")


def load_unet(paths: ModelPaths, config: dict[str, Any]) -> SonicUNet:
    """The UNet from `paths.unet`: a .safetensors file is memory-mapped (its tensors stay backed by the file)."""
    unet = build_sonic_unet(config, device="meta")
    searched, what, hint = paths.searched(paths.unet), f"Sonic UNet ({paths.unet.name})", _unet_hint(paths.unet)
    state = read_state_dict(paths.unet, what, searched, hint)
    loaded = load_checked(unet, state, paths.unet, what, searched, hint)
    logger.info("Sonic UNet loaded from %s", paths.unet)
    return loaded


def load_audio_adapters(paths: ModelPaths, whisper_dim: int, whisper_layers: int, cross_dim: int,
                        clip_dim: int) -> tuple[AudioTokenProjector, MotionBucketPredictor]:
    with torch.device("meta"):
        projector = AudioTokenProjector(TOKEN_WINDOW, whisper_layers + 1, whisper_dim, cross_dim, cross_dim,
                                        AUDIO_TOKENS)
        predictor = MotionBucketPredictor(BUCKET_WINDOW, 1, whisper_dim, clip_dim, cross_dim, 1, 2)
    loaded = []
    for module, path, what in ((projector, paths.audio2token, "audio2token.pth"),
                               (predictor, paths.audio2bucket, "audio2bucket.pth")):
        searched, hint = paths.searched(path), download_hint("sonic")
        state = read_state_dict(path, what, searched, hint)
        loaded.append(load_checked(module, state, path, what, searched, hint))
    return loaded[0], loaded[1]


def load_rife(path: Path, searched: Path) -> IFNet:
    what, hint = "RIFE flownet.pkl", download_hint("rife")
    raw = read_state_dict(path, what, searched, hint)
    with torch.device("meta"):
        net = IFNet()
    state = strip_module_prefix(raw)
    if not state:
        check_state_dict(raw, {"module." + k: s for k, s in expected_shapes(net).items()}, path, what, searched,
                         hint)
    return load_checked(net, state, path, what, searched, hint)


def load_whisper(folder: Path, searched: Path) -> tuple[nn.Module, Any, Any]:
    from transformers import WhisperFeatureExtractor, WhisperModel

    _require_dir(folder, "whisper-tiny", searched, "whisper")
    try:
        model = WhisperModel.from_pretrained(folder, local_files_only=True)
        extractor = WhisperFeatureExtractor.from_pretrained(folder, local_files_only=True)
    except LOAD_ERRORS as exc:
        raise _hf_error("whisper-tiny model", folder, searched, exc, "whisper") from exc
    return model.encoder.eval(), extractor, model.config


def _transformers_dtype_kwarg() -> str:
    """transformers renamed `torch_dtype` to `dtype` in 4.56 (the old name warns in 5.x, the new one is ignored
    before 4.56)."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"


def load_vae_and_clip(svd: Path, searched: Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, nn.Module]:
    """The SVD VAE and CLIP image encoder in `dtype`, whatever dtype their files hold.

    Passed explicitly: transformers 5 keeps the file's dtype by default (fp16 for SVD-xt's image encoder) while
    diffusers loads in fp32, so without it a float32 run would get fp16 CLIP embeddings.
    """
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionModelWithProjection

    if is_single_file(svd):
        return load_vae_and_clip_from_single_file(svd, dtype)
    _require_dir(svd, "stable-video-diffusion-img2vid-xt", searched, "svd")
    vae_dir, clip_dir = svd / "vae", svd / "image_encoder"
    _require_dir(vae_dir, "SVD VAE", searched, "vae")
    _require_dir(clip_dir, "SVD image encoder", searched, "image_encoder")
    try:
        vae = AutoencoderKLTemporalDecoder.from_pretrained(
            vae_dir, variant=_variant(vae_dir), local_files_only=True, low_cpu_mem_usage=False, torch_dtype=dtype
        )
    except LOAD_ERRORS as exc:
        raise _hf_error("SVD VAE", vae_dir, searched, exc, "vae") from exc
    try:
        clip = CLIPVisionModelWithProjection.from_pretrained(
            clip_dir, variant=_variant(clip_dir), local_files_only=True, **{_transformers_dtype_kwarg(): dtype}
        )
    except LOAD_ERRORS as exc:
        raise _hf_error("SVD CLIP image encoder", clip_dir, searched, exc, "image_encoder") from exc
    return vae.eval(), clip.eval()


def _scheduler_config(svd: Path) -> dict[str, Any]:
    path = svd / "scheduler" / "scheduler_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        logger.warning("unreadable scheduler config %s; the sampler uses its built-in SVD-xt values", path)
        return {}


def _require_present(paths: ModelPaths, whisper: WhisperSearch | None) -> None:
    """Fail before loading anything big when a required file or folder is absent, naming all of them."""
    missing = inspect_model_files(paths, whisper).missing()
    if not missing:
        return
    listed = "; ".join(f"{f.name} ({f.path}, {f.status})" for f in missing)
    hints = sorted({f.hint for f in missing})
    searched = paths.root if paths.root is not None else "the configured paths"
    raise CheckpointError(
        problem=f"{len(missing)} required model file(s) missing in {searched}: {listed}",
        expected="the official layout: Sonic/unet.pth, Sonic/audio2token.pth, Sonic/audio2bucket.pth, "
        "stable-video-diffusion-img2vid-xt/{vae,image_encoder}/, whisper-tiny/ (or whisper-tiny in ComfyUI's "
        "models/audio_encoders or the Hugging Face cache)",
        fix="download them: " + " ; ".join(hints),
    )


def _small_configs(paths: ModelPaths) -> tuple[Any, Any]:
    """Whisper and CLIP configs (JSON only) to size the audio adapters before loading any weights."""
    from transformers import CLIPVisionConfig, WhisperConfig

    try:
        whisper = WhisperConfig.from_pretrained(paths.whisper, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise _hf_error("whisper-tiny config", paths.whisper, paths.searched(paths.whisper), exc, "whisper") from exc
    if paths.svd_is_single_file:  # the single file holds no configs: SVD-xt's image encoder is ViT-H/14
        return whisper, CLIPVisionConfig(**CLIP_VIT_H14_CONFIG)
    clip_dir = paths.svd / "image_encoder"
    try:
        clip = CLIPVisionConfig.from_pretrained(clip_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise _hf_error("SVD image encoder config", clip_dir, paths.searched(clip_dir), exc,
                        "image_encoder") from exc
    return whisper, clip


def load_sonic_models(source: Path | str | ModelPaths, *, with_rife: bool = True,
                      dtype: torch.dtype = torch.float32, whisper: WhisperSearch | None = None) -> SonicModelSet:
    """Load all models to the CPU from a root folder (official layout) or explicit `ModelPaths`; no network.

    `whisper` is the search that placed whisper-tiny (`checkpoint_paths.find_whisper` with the host's folders);
    a missing whisper-tiny is reported with every place it names.

    UNet, VAE and CLIP load in `dtype` (the plan's precision: `memory.preflight.plan_dtype`); whisper, the audio
    adapters and RIFE in float32, as the reference runs them. Cheap checks come first (presence, configs, Sonic
    state-dict keys/shapes) so a wrong file fails fast.
    """
    paths = as_model_paths(source, whisper)
    _require_present(paths, whisper)
    unet_config = read_unet_config(paths)
    cross_dim = int(unet_config["cross_attention_dim"])
    whisper_config, clip_config = _small_configs(paths)
    clip_dim = int(clip_config.projection_dim)
    if clip_dim != cross_dim:
        raise CheckpointError(
            problem=f"The SVD image encoder projects to {clip_dim} channels but the UNet expects {cross_dim}",
            expected="an image_encoder and unet/config.json from the same stable-video-diffusion-img2vid-xt",
            fix=f"download the SVD folder again: {download_hint('svd')}",
        )
    projector, predictor = load_audio_adapters(paths, int(whisper_config.d_model),
                                               int(whisper_config.encoder_layers), cross_dim, clip_dim)
    rife = None
    if with_rife and paths.rife is not None:
        rife = load_rife(paths.rife, paths.searched(paths.rife))
    # unet.pth is fp32 in the official download; no copy is made when that is the dtype asked for.
    unet = load_unet(paths, unet_config).to(dtype)
    whisper, extractor, _ = load_whisper(paths.whisper, paths.searched(paths.whisper))
    vae, clip = load_vae_and_clip(paths.svd, paths.searched(paths.svd), dtype)
    # The engine runs the small models in float32 (features, buckets, tokens, RIFE), whatever dtype their files
    # hold: an fp16 conversion of audio2token.pth would otherwise fail mid-run with a dtype mismatch.
    for small in (projector, predictor, whisper, rife):
        if small is not None:
            small.float()
    face = paths.yoloface if paths.yoloface is not None and paths.yoloface.is_file() else None
    summary = {
        "unet_config": unet_config,
        "unet_file": str(paths.unet),
        "whisper_folder": str(paths.whisper),
        "cross_attention_dim": cross_dim,
        "whisper_d_model": int(whisper_config.d_model),
        "whisper_encoder_layers": int(whisper_config.encoder_layers),
        "vae_scaling_factor": float(getattr(vae.config, "scaling_factor", 0.18215)),
        "scheduler_config": _scheduler_config(paths.svd),
        "has_rife": rife is not None,
        "has_face_detector": face is not None,
    }
    return SonicModelSet(unet=unet, audio_token_projector=projector, motion_bucket_predictor=predictor,
                         whisper_encoder=whisper, feature_extractor=extractor, vae=vae, image_encoder=clip,
                         rife=rife, face_detector_path=face, paths=paths, config=summary)
