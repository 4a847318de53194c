"""The engine's modules, built on the meta device at a given configuration (no weights, no real memory).

The configurations themselves live with the models (`models/configs.py`: `ModelConfigs.full_size()` is Sonic's
real one, `ModelConfigs.tiny()` a small one for tests); `MetaModels` builds each module once per dtype and keeps it.
"""

from __future__ import annotations

import time

import torch
from diffusers import AutoencoderKLTemporalDecoder
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ..models.audio_adapters import AudioTokenProjector, MotionBucketPredictor
from ..models.configs import ModelConfigs
from ..models.rife import IFNet
from ..models.unet import build_sonic_unet
from .tracker import module_weight_bytes


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
        self.build_seconds: dict[str, float] = {}  # wall seconds building each model (all dtypes summed)

    def get(self, name: str, dtype: torch.dtype) -> nn.Module:
        key = (name, dtype)
        if key not in self._modules:
            started = time.perf_counter()
            self._modules[key] = _build(name, self.configs, dtype)
            self.build_seconds[name] = self.build_seconds.get(name, 0.0) + time.perf_counter() - started
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
