"""Forward of one `TransformerSpatioTemporalModel` with Sonic's audio conditioning.

The modules (and so the parameter names) are diffusers'; only the computation is ours: per-frame CLIP + audio
context in the spatial layers (audio weighted by the face mask), the window-mean context in the temporal layers,
and optional feed-forward chunking.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import BasicTransformerBlock, TemporalBasicTransformerBlock
from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel
from torch import Tensor

from .unet_attention import CrossContext, SonicAudioAttnProcessor, feed_forward, self_attention


def _audio_processor(block: BasicTransformerBlock | TemporalBasicTransformerBlock) -> SonicAudioAttnProcessor:
    processor = block.attn2.processor
    if not isinstance(processor, SonicAudioAttnProcessor):
        raise TypeError("attn2 has no Sonic audio processor; build the UNet with build_sonic_unet()")
    return processor


def spatial_block_forward(block: BasicTransformerBlock, hidden: Tensor, ctx: CrossContext) -> Tensor:
    """Spatial transformer block on (B*F, h*w, C): self-attn, masked CLIP+audio cross-attn, feed-forward."""
    hidden = self_attention(block.attn1, block.norm1(hidden)) + hidden
    weight = ctx.mask_weight(hidden.shape[1], hidden.dtype)
    cross = _audio_processor(block)(
        block.attn2, block.norm2(hidden), ctx.clip_frames, ctx.audio_frames, ctx.audio_scale, weight
    )
    hidden = cross + hidden
    return feed_forward(block.ff, block.norm3(hidden), ctx.ff_chunks) + hidden


def temporal_block_forward(
    block: TemporalBasicTransformerBlock, hidden: Tensor, ctx: CrossContext
) -> Tensor:
    """Temporal transformer block on (B*F, h*w, C): attention along frames, unmasked window-mean context."""
    batch_frames, tokens, channels = hidden.shape
    batch, frames = ctx.batch, ctx.frames
    # (B*F, S, C) -> (B*S, F, C), batch-major rows as in diffusers.
    hidden = hidden.reshape(batch, frames, tokens, channels).permute(0, 2, 1, 3).reshape(batch * tokens, frames, -1)
    residual = hidden
    hidden = feed_forward(block.ff_in, block.norm_in(hidden), ctx.ff_chunks)
    if block.is_res:
        hidden = hidden + residual
    hidden = self_attention(block.attn1, block.norm1(hidden)) + hidden
    cross = _audio_processor(block)(
        block.attn2, block.norm2(hidden), ctx.clip_window, ctx.audio_window, ctx.audio_scale, None
    )
    hidden = cross + hidden
    out = feed_forward(block.ff, block.norm3(hidden), ctx.ff_chunks)
    hidden = out + hidden if block.is_res else out
    return hidden.reshape(batch, tokens, frames, -1).permute(0, 2, 1, 3).reshape(batch_frames, tokens, -1)


def transformer_forward(model: TransformerSpatioTemporalModel, hidden: Tensor, ctx: CrossContext,
                        image_only_indicator: Tensor) -> Tensor:
    """(B*F, C, h, w) -> same shape; residual around norm/proj_in/blocks/proj_out as in SVD."""
    batch_frames, _, height, width = hidden.shape
    residual = hidden
    hidden = model.norm(hidden)
    inner = hidden.shape[1]
    hidden = hidden.permute(0, 2, 3, 1).reshape(batch_frames, height * width, inner)
    hidden = model.proj_in(hidden)

    # Frame positions 0..F-1 within the window, the same for every batch row.
    positions = torch.arange(ctx.frames, device=hidden.device).repeat(ctx.batch)
    frame_emb = model.time_pos_embed(model.time_proj(positions).to(hidden.dtype))[:, None, :]

    for block, temporal_block in zip(model.transformer_blocks, model.temporal_transformer_blocks):
        hidden = spatial_block_forward(block, hidden, ctx)
        mixed = temporal_block_forward(temporal_block, hidden + frame_emb, ctx)
        hidden = model.time_mixer(x_spatial=hidden, x_temporal=mixed, image_only_indicator=image_only_indicator)

    hidden = model.proj_out(hidden)
    hidden = hidden.reshape(batch_frames, height, width, inner).permute(0, 3, 1, 2).contiguous()
    return hidden + residual
