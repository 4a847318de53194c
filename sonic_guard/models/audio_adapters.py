"""Sonic's audio adapters: whisper windows -> cross-attention tokens, and whisper + CLIP -> motion buckets.

Parameter names match the official audio2token.pth / audio2bucket.pth. Both run in fp32 in the official code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AudioTokenProjector(nn.Module):
    """(B, F, seq_len, blocks, channels) whisper window -> (B, F, context_tokens, output_dim) audio tokens."""

    def __init__(
        self,
        seq_len: int = 10,
        blocks: int = 5,
        channels: int = 384,
        intermediate_dim: int = 1024,
        output_dim: int = 1024,
        context_tokens: int = 32,
    ) -> None:
        super().__init__()
        self.seq_len, self.blocks, self.channels = seq_len, blocks, channels
        self.output_dim, self.context_tokens = output_dim, context_tokens
        self.proj1 = nn.Linear(seq_len * blocks * channels, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, frames = x.shape[:2]
        # Flattened per frame in (time, layer, channel) order, as the official model was trained.
        hidden = x.reshape(batch * frames, -1)
        hidden = torch.relu(self.proj1(hidden))
        hidden = torch.relu(self.proj2(hidden))
        tokens = self.proj3(hidden).reshape(batch * frames, self.context_tokens, self.output_dim)
        return self.norm(tokens).reshape(batch, frames, self.context_tokens, self.output_dim)


class MotionBucketPredictor(nn.Module):
    """(B, F, seq_len, blocks, channels) whisper window + (B, 1, clip_channels) CLIP embeds -> (B, F, 2, 1) raw."""

    def __init__(
        self,
        seq_len: int = 50,
        blocks: int = 1,
        channels: int = 384,
        clip_channels: int = 1024,
        intermediate_dim: int = 1024,
        output_dim: int = 1,
        context_tokens: int = 2,
    ) -> None:
        super().__init__()
        self.output_dim, self.context_tokens = output_dim, context_tokens
        self.proj1 = nn.Linear(seq_len * blocks * channels + clip_channels, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.act = nn.SiLU()

    def forward(self, audio: Tensor, clip_embeds: Tensor) -> Tensor:
        batch, frames = audio.shape[:2]
        hidden = audio.reshape(batch, frames, -1)
        clip = clip_embeds.reshape(batch, 1, -1).to(hidden.dtype).expand(batch, frames, -1)
        # Audio columns first, then CLIP (proj1 columns 0..A-1 are audio).
        hidden = torch.cat([hidden, clip], dim=-1)
        hidden = self.act(self.proj1(hidden))
        hidden = self.act(self.proj2(hidden))
        return self.proj3(hidden).reshape(batch, frames, self.context_tokens, self.output_dim)


def raw_to_bucket(raw: Tensor) -> Tensor:
    """Official mapping of the predictor's output to SVD motion-bucket ids: raw * 16 + 16."""
    return raw * 16 + 16
