"""Sonic's attention inside the SVD spatio-temporal transformers.

Every cross-attention (attn2) attends to the CLIP token(s) and, with the same query, to the audio tokens through
`to_k_ip`/`to_v_ip`; the audio result is scaled (and, in spatial layers, weighted by the face mask) and added before
`to_out`. The temporal layers see the window mean of the per-frame contexts (official `spatial2time`).

Row order, checked against the official `spatial2time` and diffusers' `TemporalBasicTransformerBlock`: temporal
rows are batch-major, row = b * (h*w) + position, and the official context is `mean over frames` then
`repeat(1, h*w, 1, 1).reshape(B*h*w, ...)`, also batch-major. Since cross-attention has no interaction between
queries, we regroup the (B*h*w, F, C) queries as (B, h*w*F, C) and attend to the (B, tokens, C) window context:
exactly the official result without materialising the context h*w times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn


@dataclass
class CrossContext:
    """Per-forward conditioning shared by all transformer layers (built once per UNet call)."""

    batch: int
    frames: int
    clip_frames: Tensor  # (B*F, 1, D): per-frame CLIP context for spatial layers
    audio_frames: Tensor  # (B*F, T, D): per-frame audio tokens for spatial layers
    clip_window: Tensor  # (B, 1, D): window mean for temporal layers
    audio_window: Tensor  # (B, T, D): window mean for temporal layers
    face_mask: Tensor | None  # (1, 1, H, W) in [0, 1]
    audio_scale: float
    ff_chunks: int | None
    mask_by_tokens: dict[int, Tensor] = field(default_factory=dict)

    def mask_weight(self, num_tokens: int, dtype: torch.dtype) -> Tensor | None:
        """Face mask on a token grid of `num_tokens`, shape (1, num_tokens, 1); cached per forward call."""
        if self.face_mask is None:
            return None
        if num_tokens not in self.mask_by_tokens:
            self.mask_by_tokens[num_tokens] = downsample_mask(self.face_mask, num_tokens).to(dtype)
        return self.mask_by_tokens[num_tokens]


def downsample_mask(mask: Tensor, num_tokens: int) -> Tensor:
    """Bicubic resize of a (1, 1, H, W) mask to the token grid, flattened to (1, num_tokens, 1).

    Grid size follows diffusers' IPAdapterMaskProcessor.downsample (used by the official processor): the height
    comes from the mask's aspect ratio, padded with zeros / cut when the area does not match.
    """
    height, width = mask.shape[-2:]
    ratio = width / height
    grid_h = int(math.sqrt(num_tokens / ratio))
    grid_h = grid_h + int(num_tokens % grid_h != 0)
    grid_w = num_tokens // grid_h
    small = F.interpolate(mask.reshape(1, 1, height, width).float(), size=(grid_h, grid_w), mode="bicubic")
    flat = small.reshape(1, -1)
    if flat.shape[1] < num_tokens:
        flat = F.pad(flat, (0, num_tokens - flat.shape[1]), value=0.0)
    return flat[:, :num_tokens, None]


def _heads(x: Tensor, heads: int) -> Tensor:
    batch, length, channels = x.shape
    return x.view(batch, length, heads, channels // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


def self_attention(attn: Attention, hidden: Tensor) -> Tensor:
    """Plain multi-head self-attention with the layer's own projections (attn1)."""
    query = _heads(attn.to_q(hidden), attn.heads)
    key = _heads(attn.to_k(hidden), attn.heads)
    value = _heads(attn.to_v(hidden), attn.heads)
    out = _merge_heads(F.scaled_dot_product_attention(query, key, value))
    return attn.to_out[1](attn.to_out[0](out))


class SonicAudioAttnProcessor(nn.Module):
    """Holds the audio key/value projections of one attn2 (state-dict names `processor.to_k_ip.0.weight`)."""

    def __init__(self, hidden_size: int, cross_attention_dim: int) -> None:
        super().__init__()
        self.to_k_ip = nn.ModuleList([nn.Linear(cross_attention_dim, hidden_size, bias=False)])
        self.to_v_ip = nn.ModuleList([nn.Linear(cross_attention_dim, hidden_size, bias=False)])

    def forward(
        self,
        attn: Attention,
        hidden: Tensor,
        clip_context: Tensor,
        audio_context: Tensor,
        audio_scale: float,
        audio_weight: Tensor | None = None,
    ) -> Tensor:
        """Cross-attention of `hidden` (N, L, C) to CLIP + audio contexts (Bc, tokens, D).

        N*L queries are regrouped into Bc groups (rows of `hidden` must be ordered context-batch-major); each group
        attends to its own context row. `audio_weight` (1, L', 1) weights the audio term per query of a group.
        """
        rows, length, channels = hidden.shape
        groups = clip_context.shape[0]
        query = _heads(attn.to_q(hidden).reshape(groups, -1, channels), attn.heads)
        key = _heads(attn.to_k(clip_context), attn.heads)
        value = _heads(attn.to_v(clip_context), attn.heads)
        out = _merge_heads(F.scaled_dot_product_attention(query, key, value))
        if audio_scale != 0.0:
            audio_key = _heads(self.to_k_ip[0](audio_context), attn.heads)
            audio_value = _heads(self.to_v_ip[0](audio_context), attn.heads)
            audio = _merge_heads(F.scaled_dot_product_attention(query, audio_key, audio_value))
            if torch.is_grad_enabled():
                out = out + audio_scale * (audio if audio_weight is None else audio * audio_weight)
            else:
                # In place on fresh tensors (inference): no extra (rows, tokens, C) temporaries at the peak.
                if audio_weight is not None:
                    audio.mul_(audio_weight)
                out.add_(audio, alpha=audio_scale)
            del audio
        out = attn.to_out[1](attn.to_out[0](out))
        return out.reshape(rows, length, -1)


def feed_forward(ff: nn.Module, hidden: Tensor, chunks: int | None) -> Tensor:
    """Apply a per-token feed-forward, optionally in `chunks` pieces along the tokens to cut its peak memory.

    The output is preallocated and filled piece by piece, so only one piece's GEGLU intermediate is alive.
    """
    if not chunks or chunks <= 1:
        return ff(hidden)
    flat = hidden.reshape(-1, hidden.shape[-1])
    pieces = torch.tensor_split(flat, min(chunks, flat.shape[0]), dim=0)
    first = ff(pieces[0])
    out = flat.new_empty((flat.shape[0], first.shape[-1]))
    start = first.shape[0]
    out[:start] = first
    del first
    for piece in pieces[1:]:
        out[start : start + piece.shape[0]] = ff(piece)
        start += piece.shape[0]
    return out.reshape(*hidden.shape[:-1], -1)
