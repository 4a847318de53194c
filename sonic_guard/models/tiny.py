"""A tiny random Sonic model set in exactly the official layout and formats, for tests and demos.

Same block structure, key names and file formats as the real checkpoints; only the widths are small. Writing it
and loading it takes seconds, and a UNet forward at 8x8 latents x 25 frames x batch 3 runs on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .audio_adapters import AudioTokenProjector, MotionBucketPredictor
from .checkpoint_paths import ModelPaths
from .checkpoints import AUDIO_TOKENS, BUCKET_WINDOW, TOKEN_WINDOW
from .configs import (
    SVD_XT_SCHEDULER_CONFIG,
    TINY_CROSS_ATTENTION_DIM,
    TINY_UNET_CONFIG,
    TINY_WHISPER_DIM,
)
from .rife import IFNet
from .unet import build_sonic_unet


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


def _write_sonic_files(root: Path) -> None:
    sonic = root / "Sonic"
    sonic.mkdir(parents=True, exist_ok=True)
    unet = build_sonic_unet(TINY_UNET_CONFIG)
    torch.save(unet.state_dict(), sonic / "unet.pth")
    projector = AudioTokenProjector(TOKEN_WINDOW, 5, TINY_WHISPER_DIM, TINY_CROSS_ATTENTION_DIM,
                                    TINY_CROSS_ATTENTION_DIM, AUDIO_TOKENS)
    torch.save(projector.state_dict(), sonic / "audio2token.pth")
    predictor = MotionBucketPredictor(BUCKET_WINDOW, 1, TINY_WHISPER_DIM, TINY_CROSS_ATTENTION_DIM,
                                      TINY_CROSS_ATTENTION_DIM, 1, 2)
    torch.save(predictor.state_dict(), sonic / "audio2bucket.pth")
    rife = IFNet()
    (root / "RIFE").mkdir(parents=True, exist_ok=True)
    torch.save({"module." + k: v for k, v in rife.state_dict().items()}, root / "RIFE" / "flownet.pkl")


def _write_svd_folder(svd: Path) -> None:
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    write_json(svd / "unet" / "config.json",
                {"_class_name": "UNetSpatioTemporalConditionModel", **TINY_UNET_CONFIG})
    write_json(svd / "scheduler" / "scheduler_config.json", SVD_XT_SCHEDULER_CONFIG)
    vae = AutoencoderKLTemporalDecoder(
        down_block_types=("DownEncoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        sample_size=64,
    )
    vae.save_pretrained(svd / "vae")
    clip_config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, projection_dim=TINY_CROSS_ATTENTION_DIM,
                                   num_hidden_layers=2, num_attention_heads=2, image_size=224, patch_size=32)
    CLIPVisionModelWithProjection(clip_config).save_pretrained(svd / "image_encoder")


def _write_whisper(folder: Path) -> None:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    config = WhisperConfig(
        d_model=TINY_WHISPER_DIM,
        encoder_layers=4,  # 4 layers -> 5 hidden states, like whisper-tiny
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        vocab_size=128,
        max_target_positions=32,
        num_mel_bins=80,
        max_source_positions=1500,
        decoder_start_token_id=1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    WhisperModel(config).save_pretrained(folder)
    WhisperFeatureExtractor().save_pretrained(folder)


def write_tiny_model_set(root: Path, seed: int = 0) -> ModelPaths:
    """Write small random models under `root` in the official checkpoint layout; deterministic given `seed`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _write_sonic_files(root)
        _write_svd_folder(root / "stable-video-diffusion-img2vid-xt")
        _write_whisper(root / "whisper-tiny")
    return ModelPaths.from_root(root)
