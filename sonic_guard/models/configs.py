"""Every network configuration in one place: the published full-size Sonic / SVD-xt / CLIP / whisper-tiny
configs, the small test configs, and `ModelConfigs`, the set a run uses. The models are built from these; the
memory model reads the same values (it builds the modules on the meta device), so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RIFE_CHANNELS = 90  # the IFNet width of the published RIFE flownet.pkl

SVD_XT_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 96,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": [
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    ],
    "up_block_types": [
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    ],
    "block_out_channels": [320, 640, 1280, 1280],
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 768,
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "transformer_layers_per_block": 1,
    "num_attention_heads": [5, 10, 20, 20],
    "num_frames": 25,
}


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


TINY_CROSS_ATTENTION_DIM = 32


TINY_WHISPER_DIM = 64


TINY_UNET_CONFIG: dict[str, Any] = {
    **SVD_XT_UNET_CONFIG,
    "block_out_channels": [32, 32, 32, 32],
    "num_attention_heads": [2, 2, 2, 2],
    "cross_attention_dim": TINY_CROSS_ATTENTION_DIM,
    "addition_time_embed_dim": 16,
    "projection_class_embeddings_input_dim": 48,
    "sample_size": 8,
}


SVD_XT_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}
