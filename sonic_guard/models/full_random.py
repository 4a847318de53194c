"""A full-size random Sonic model set (SVD-xt UNet + VAE, CLIP ViT-H/14, whisper-tiny, RIFE) in the official layout.

Peak GPU memory does not depend on the weights' values, so these files stand in for the real checkpoints when
the GPU figures are calibrated and validated (bench/bench_gpu.py): same configurations, key names, shapes and
file formats as the downloads, random values. About 5 GB on disk in fp16; building on a GPU takes seconds.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .audio_adapters import AudioTokenProjector, MotionBucketPredictor
from .checkpoint_paths import ModelPaths
from .configs import (
    AUDIO_ADAPTERS_CONFIG,
    CLIP_VIT_H14_CONFIG,
    SVD_XT_SCHEDULER_CONFIG,
    SVD_XT_UNET_CONFIG,
    SVD_XT_VAE_CONFIG,
    WHISPER_TINY_CONFIG,
)
from .rife import IFNet
from .tiny import write_json
from .unet import build_sonic_unet

logger = logging.getLogger(__name__)


def _cpu_state(module: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state dict on the CPU in `dtype` (fp16 by default: half the disk and write time)."""
    return {key: value.to("cpu", dtype) for key, value in module.state_dict().items()}


def _write_sonic_files(root: Path, build_device: torch.device, dtype: torch.dtype) -> None:
    sonic = root / "Sonic"
    sonic.mkdir(parents=True, exist_ok=True)
    unet = build_sonic_unet(SVD_XT_UNET_CONFIG, device=build_device, dtype=dtype)
    torch.save(_cpu_state(unet, dtype), sonic / "unet.pth")
    del unet
    token, bucket = AUDIO_ADAPTERS_CONFIG["token"], AUDIO_ADAPTERS_CONFIG["bucket"]
    torch.save(_cpu_state(AudioTokenProjector(**token), dtype), sonic / "audio2token.pth")
    torch.save(_cpu_state(MotionBucketPredictor(**bucket), dtype), sonic / "audio2bucket.pth")
    (root / "RIFE").mkdir(parents=True, exist_ok=True)
    rife = {"module." + key: value for key, value in IFNet().state_dict().items()}
    torch.save(rife, root / "RIFE" / "flownet.pkl")


def _write_svd_folder(svd: Path, build_device: torch.device, dtype: torch.dtype) -> None:
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    write_json(svd / "unet" / "config.json", {"_class_name": "UNetSpatioTemporalConditionModel",
                                              **SVD_XT_UNET_CONFIG})
    write_json(svd / "scheduler" / "scheduler_config.json", SVD_XT_SCHEDULER_CONFIG)
    vae_kwargs = {**SVD_XT_VAE_CONFIG, "down_block_types": tuple(SVD_XT_VAE_CONFIG["down_block_types"]),
                  "block_out_channels": tuple(SVD_XT_VAE_CONFIG["block_out_channels"])}
    with torch.device(build_device):
        vae = AutoencoderKLTemporalDecoder(**vae_kwargs)
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_H14_CONFIG))
    vae.to("cpu", dtype).save_pretrained(svd / "vae")
    clip.to("cpu", dtype).save_pretrained(svd / "image_encoder")


def _write_whisper(folder: Path) -> None:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    WhisperModel(WhisperConfig(**WHISPER_TINY_CONFIG)).save_pretrained(folder)
    WhisperFeatureExtractor().save_pretrained(folder)


def write_full_size_random_model_set(root: Path, *, seed: int = 0, build_device: str | torch.device = "cpu",
                                     dtype: torch.dtype = torch.float16) -> ModelPaths:
    """Write random full-size models under `root` in the official layout (skipped when already complete)."""
    root = Path(root)
    done = root / ".complete"
    if not done.is_file():
        device = torch.device(build_device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _write_sonic_files(root, device, dtype)
            _write_svd_folder(root / "stable-video-diffusion-img2vid-xt", device, dtype)
            _write_whisper(root / "whisper-tiny")
        done.write_text("random full-size Sonic model set\n", encoding="utf-8")
        logger.info("wrote a random full-size Sonic model set to %s", root)
    return ModelPaths.from_root(root)
