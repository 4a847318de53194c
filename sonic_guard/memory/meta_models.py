"""The engine's modules, built on the meta device at a given configuration (no weights, no real memory).

`ModelConfigs.full_size()` is Sonic's real configuration (SVD-xt UNet + VAE, CLIP ViT-H/14, whisper-tiny);
`ModelConfigs.tiny()` is a small one for tests. `MetaModels` builds each module once per dtype and keeps it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKLTemporalDecoder
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ..models.audio_adapters import AudioTokenProjector, MotionBucketPredictor
from ..models.rife import RIFE_CHANNELS, IFNet
from ..models.unet import SVD_XT_UNET_CONFIG, build_sonic_unet
from .tracker import module_weight_bytes

SVD_XT_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 768,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
    "scaling_factor": 0.18215, "force_upcast": True,
}
CLIP_VIT_H14_CONFIG: dict[str, Any] = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 16, "num_hidden_layers": 32,
    "patch_size": 14, "image_size": 224, "projection_dim": 1024, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
}
WHISPER_TINY_CONFIG: dict[str, Any] = {
    "d_model": 384, "encoder_layers": 4, "encoder_attention_heads": 6, "encoder_ffn_dim": 1536,
    "decoder_layers": 4, "decoder_attention_heads": 6, "decoder_ffn_dim": 1536, "num_mel_bins": 80,
    "max_source_positions": 1500, "vocab_size": 51865,
}
AUDIO_ADAPTERS_CONFIG: dict[str, Any] = {
    "token": {"seq_len": 10, "blocks": 5, "channels": 384, "intermediate_dim": 1024, "output_dim": 1024,
              "context_tokens": 32},
    "bucket": {"seq_len": 50, "blocks": 1, "channels": 384, "clip_channels": 1024, "intermediate_dim": 1024,
               "output_dim": 1, "context_tokens": 2},
}
# Approximate fp32 size of the face detector (YOLO, spec section 6.1), which the estimator does not build.
DEFAULT_FIXED_WEIGHTS: dict[str, int] = {"face_detector": 85_000_000}


@dataclass(frozen=True)
class ModelConfigs:
    """Configurations of the modules a run uses, plus fixed byte figures for modules not simulated."""

    unet: Mapping[str, Any] = field(default_factory=lambda: dict(SVD_XT_UNET_CONFIG))
    vae: Mapping[str, Any] = field(default_factory=lambda: dict(SVD_XT_VAE_CONFIG))
    clip: Mapping[str, Any] = field(default_factory=lambda: dict(CLIP_VIT_H14_CONFIG))
    whisper: Mapping[str, Any] = field(default_factory=lambda: dict(WHISPER_TINY_CONFIG))
    audio_adapters: Mapping[str, Any] = field(default_factory=lambda: dict(AUDIO_ADAPTERS_CONFIG))
    rife_channels: int = RIFE_CHANNELS
    fixed_weights: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_FIXED_WEIGHTS))
    audio_tokens: int = 32  # audio context tokens per frame (T)
    whisper_frames: int = 3000  # mel frames of one 30 s chunk
    window_frames: int = 25

    @classmethod
    def full_size(cls) -> ModelConfigs:
        return cls()

    @classmethod
    def tiny(cls) -> ModelConfigs:
        """Small configurations with the same module classes (tests, CPU validation)."""
        unet = {
            **SVD_XT_UNET_CONFIG, "block_out_channels": [32, 64], "num_attention_heads": [2, 4],
            "cross_attention_dim": 64, "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 24,
            "layers_per_block": 1, "num_frames": 4, "sample_size": 16,
            "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
            "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
        }
        vae = {**SVD_XT_VAE_CONFIG, "block_out_channels": [32, 64], "layers_per_block": 1,
               "down_block_types": ["DownEncoderBlock2D"] * 2}
        clip = {**CLIP_VIT_H14_CONFIG, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                "num_hidden_layers": 2, "image_size": 28, "projection_dim": 16}
        whisper = {**WHISPER_TINY_CONFIG, "d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2,
                   "encoder_ffn_dim": 64, "decoder_layers": 1, "decoder_attention_heads": 2,
                   "decoder_ffn_dim": 64, "num_mel_bins": 8, "max_source_positions": 50}
        adapters = {
            "token": {**AUDIO_ADAPTERS_CONFIG["token"], "channels": 32, "intermediate_dim": 32, "output_dim": 64,
                      "context_tokens": 4},
            "bucket": {**AUDIO_ADAPTERS_CONFIG["bucket"], "channels": 32, "clip_channels": 64,
                       "intermediate_dim": 32},
        }
        return cls(unet=unet, vae=vae, clip=clip, whisper=whisper, audio_adapters=adapters, rife_channels=8,
                   fixed_weights={}, audio_tokens=4, whisper_frames=100, window_frames=4)

    def fingerprint(self) -> str:
        """Stable short hash of every field: part of each cache key."""
        blob = json.dumps(
            {"unet": dict(self.unet), "vae": dict(self.vae), "clip": dict(self.clip), "whisper": dict(self.whisper),
             "adapters": dict(self.audio_adapters), "rife": self.rife_channels, "fixed": dict(self.fixed_weights),
             "tokens": self.audio_tokens, "mel": self.whisper_frames, "window": self.window_frames},
            sort_keys=True, default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _on_meta(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    # Some constructors create tensors with legacy constructors that ignore the device context; move them too.
    # nn.Module.to directly: diffusers' override only adds a warning about fp32-pinned modules (none here).
    return nn.Module.to(module, device="meta", dtype=dtype).eval()


def _build(name: str, configs: ModelConfigs, dtype: torch.dtype) -> nn.Module:
    with torch.device("meta"):
        if name == "unet":
            module: nn.Module = build_sonic_unet(configs.unet, device="meta", dtype=dtype)
        elif name == "vae":
            kwargs = dict(configs.vae)
            kwargs["down_block_types"] = tuple(kwargs["down_block_types"])
            kwargs["block_out_channels"] = tuple(kwargs["block_out_channels"])
            module = AutoencoderKLTemporalDecoder(**kwargs)
        elif name == "clip":
            config = CLIPVisionConfig(**configs.clip)
            config._attn_implementation = "sdpa"
            module = CLIPVisionModelWithProjection(config)
        elif name == "audio_adapters":
            module = nn.ModuleDict({
                "audio2token": AudioTokenProjector(**configs.audio_adapters["token"]),
                "audio2bucket": MotionBucketPredictor(**configs.audio_adapters["bucket"]),
            })
        elif name == "rife":
            module = IFNet(configs.rife_channels)
        elif name == "whisper":
            config = WhisperConfig(**configs.whisper)
            config._attn_implementation = "sdpa"
            module = WhisperEncoder(config)
        else:
            raise KeyError(f"no meta builder for model {name!r}")
    return _on_meta(module, dtype)


BUILT_MODELS = frozenset({"unet", "vae", "clip", "whisper", "audio_adapters", "rife"})


class MetaModels:
    """Meta-device modules built on first use and kept for the life of this object (an estimator's)."""

    def __init__(self, configs: ModelConfigs) -> None:
        self.configs = configs
        self._modules: dict[tuple[str, torch.dtype], nn.Module] = {}
        self._weights: dict[tuple[str, torch.dtype, int], int] = {}

    def get(self, name: str, dtype: torch.dtype) -> nn.Module:
        key = (name, dtype)
        if key not in self._modules:
            self._modules[key] = _build(name, self.configs, dtype)
        return self._modules[key]

    def weight_bytes(self, name: str, dtype: torch.dtype, block: int) -> int:
        """Resident bytes of a model's weights; fixed figures for modules that are not built."""
        if name in self.configs.fixed_weights:
            return int(self.configs.fixed_weights[name])
        if name not in BUILT_MODELS:
            return 0  # a module without a builder and without a fixed figure in this configuration
        key = (name, dtype, block)
        if key not in self._weights:
            self._weights[key] = module_weight_bytes(self.get(name, dtype), block)
        return self._weights[key]

    def streamed_unet_bytes(self, dtype: torch.dtype, block: int) -> int:
        """UNet bytes resident under `models.weight_streaming`: the non-block modules + one block at a time.

        Two largest blocks are counted, not one: while a finished block leaves and the next arrives, the caching
        allocator may not yet reuse the freed segments for the differently sized tensors of the next block.
        """
        unet = self.get("unet", dtype)
        blocks: list[int] = []
        rest = 0
        for name, child in unet.named_children():
            if name in ("down_blocks", "up_blocks"):
                blocks.extend(module_weight_bytes(sub, block) for sub in child)
            elif name == "mid_block":
                blocks.append(module_weight_bytes(child, block))
            else:
                rest += module_weight_bytes(child, block)
        largest = sorted(blocks, reverse=True)[:2]
        return rest + sum(largest)
