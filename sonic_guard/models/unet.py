"""SonicUNet: the SVD-xt spatio-temporal UNet with Sonic's audio cross-attention.

The modules are diffusers' `UNetSpatioTemporalConditionModel` children (so the state dict has the official
unet.pth names); the forward walk is ours so that every transformer gets the CLIP + audio context, the face mask
and the feed-forward chunking.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel
from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionModel
from torch import Tensor, nn

from .configs import SVD_XT_UNET_CONFIG
from .unet_attention import CrossContext, SonicAudioAttnProcessor
from .unet_transformer import transformer_forward

logger = logging.getLogger(__name__)


_INIT_KEYS = frozenset(SVD_XT_UNET_CONFIG)


def unet_init_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """Keep only the constructor arguments (config.json also holds `_class_name`, `_diffusers_version`, ...)."""
    kwargs = {key: value for key, value in config.items() if key in _INIT_KEYS}
    for key in ("down_block_types", "up_block_types", "block_out_channels", "num_attention_heads"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    return kwargs


class SonicUNet(nn.Module):
    """SVD-xt UNet + audio cross-attention; forward on (B, F, 8, h, w) -> (B, F, 4, h, w) v-prediction."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(SVD_XT_UNET_CONFIG if config is None else config)
        base = UNetSpatioTemporalConditionModel(**unet_init_kwargs(self.config))
        for name, child in base.named_children():
            self.add_module(name, child)
        self.num_upsamplers = sum(1 for block in self.up_blocks if block.upsamplers is not None)
        self.ip_audio_scale: float = 1.0
        self.feed_forward_chunks: int | None = None
        # Weight offload (models.weight_streaming) sets this to bring each block's weights in for its turn.
        self.block_residency: Callable[[nn.Module], contextlib.AbstractContextManager[Any]] | None = None
        cross_dim = int(self.config["cross_attention_dim"])
        for module in self.modules():
            if isinstance(module, TransformerSpatioTemporalModel):
                for block in (*module.transformer_blocks, *module.temporal_transformer_blocks):
                    block.attn2.set_processor(SonicAudioAttnProcessor(block.attn2.inner_dim, cross_dim))

    def set_feed_forward_chunking(self, chunk: int | None) -> None:
        """Split every feed-forward into `chunk` pieces along the tokens (None or 1: off); results are equal."""
        if chunk is not None and chunk < 1:
            raise ValueError(f"feed-forward chunk count must be >= 1 or None, got {chunk}")
        self.feed_forward_chunks = chunk

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def _resident(self, block: nn.Module) -> contextlib.AbstractContextManager[Any]:
        return self.block_residency(block) if self.block_residency is not None else contextlib.nullcontext()

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def _time_embedding(self, timestep: Tensor | float, added_time_ids: Tensor, batch: int, device: torch.device,
                        dtype: torch.dtype) -> Tensor:
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([float(timestep)], dtype=torch.float32, device=device)
        timestep = timestep.reshape(-1).to(device).expand(batch)
        emb = self.time_embedding(self.time_proj(timestep).to(dtype))
        added = self.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(dtype)
        return emb + self.add_embedding(added)

    def _cross_context(self, batch: int, frames: int, clip_embeds: Tensor, audio_tokens: Tensor,
                       face_mask: Tensor | None) -> CrossContext:
        if tuple(audio_tokens.shape[:2]) != (batch, frames):
            raise ValueError(f"audio_tokens {tuple(audio_tokens.shape)} do not match sample batch/frames "
                             f"({batch}, {frames})")
        dim = clip_embeds.shape[-1]
        if clip_embeds.shape[0] == batch * frames and frames > 1:
            clip_frames = clip_embeds.reshape(batch * frames, -1, dim)  # per-frame CLIP, as the official accepts
        elif clip_embeds.shape[0] == batch:
            clip_frames = clip_embeds.reshape(batch, -1, dim).repeat_interleave(frames, dim=0)
        else:
            raise ValueError(f"clip_embeds {tuple(clip_embeds.shape)} match neither batch {batch} nor "
                             f"batch*frames {batch * frames}")
        return CrossContext(
            batch=batch,
            frames=frames,
            clip_frames=clip_frames,
            audio_frames=audio_tokens.flatten(0, 1),
            # Temporal layers: mean over the window's frames (official spatial2time), not the first frame.
            clip_window=clip_frames.reshape(batch, frames, *clip_frames.shape[1:]).mean(dim=1),
            audio_window=audio_tokens.mean(dim=1),
            face_mask=None if face_mask is None else face_mask.reshape(1, 1, *face_mask.shape[-2:]),
            audio_scale=float(self.ip_audio_scale),
            ff_chunks=self.feed_forward_chunks,
        )

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor | float,
        clip_embeds: Tensor,
        audio_tokens: Tensor,
        added_time_ids: Tensor,
        face_mask: Tensor | None = None,
    ) -> Tensor:
        """sample (B, F, 8, h, w), clip_embeds (B, 1, D), audio_tokens (B, F, T, D), added_time_ids (B, 3),
        face_mask (1, 1, H, W) in [0, 1] or None -> (B, F, 4, h, w)."""
        batch, frames = sample.shape[:2]
        dtype, device = self.dtype, sample.device
        sample = sample.to(dtype)
        emb = self._time_embedding(timestep, added_time_ids, batch, device, dtype)
        emb = emb.repeat_interleave(frames, dim=0)
        ctx = self._cross_context(batch, frames, clip_embeds.to(dtype), audio_tokens.to(dtype), face_mask)
        indicator = torch.zeros(batch, frames, dtype=dtype, device=device)

        hidden = self.conv_in(sample.flatten(0, 1))
        skips: list[Tensor] = [hidden]
        for block in self.down_blocks:
            with self._resident(block):
                attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
                for resnet, attention in zip(block.resnets, attentions):
                    hidden = resnet(hidden, emb, image_only_indicator=indicator)
                    if attention is not None:
                        hidden = transformer_forward(attention, hidden, ctx, indicator)
                    skips.append(hidden)
                if block.downsamplers is not None:
                    for downsampler in block.downsamplers:
                        hidden = downsampler(hidden)
                    skips.append(hidden)

        mid = self.mid_block
        with self._resident(mid):
            hidden = mid.resnets[0](hidden, emb, image_only_indicator=indicator)
            for attention, resnet in zip(mid.attentions, mid.resnets[1:]):
                hidden = transformer_forward(attention, hidden, ctx, indicator)
                hidden = resnet(hidden, emb, image_only_indicator=indicator)

        odd_size = any(size % (2**self.num_upsamplers) != 0 for size in sample.shape[-2:])
        for index, block in enumerate(self.up_blocks):
            with self._resident(block):
                hidden = self._up_block(block, index, hidden, skips, emb, ctx, indicator, odd_size)

        hidden = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        return hidden.reshape(batch, frames, *hidden.shape[1:])

    def _up_block(self, block: nn.Module, index: int, hidden: Tensor, skips: list[Tensor], emb: Tensor,
                  ctx: Any, indicator: Tensor, odd_size: bool) -> Tensor:
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for resnet, attention in zip(block.resnets, attentions):
            hidden = resnet(torch.cat([hidden, skips.pop()], dim=1), emb, image_only_indicator=indicator)
            if attention is not None:
                hidden = transformer_forward(attention, hidden, ctx, indicator)
        if block.upsamplers is not None:
            # Force the skip's size when latents are not a multiple of 2**upsamplers (as diffusers does).
            size = skips[-1].shape[2:] if odd_size and index < len(self.up_blocks) - 1 else None
            for upsampler in block.upsamplers:
                hidden = upsampler(hidden, size)
        return hidden


def build_sonic_unet(
    config: Mapping[str, Any] | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SonicUNet:
    """Build a randomly initialised SonicUNet directly on `device` ("meta" for shape-only work)."""
    with torch.device(device):
        unet = SonicUNet(config)
    # Some diffusers parameters (AlphaBlender.mix_factor) are made with torch.Tensor([...]), which ignores the
    # device context: move everything explicitly.
    return unet.to(device=device, dtype=dtype).eval()
