"""VAE decode as a stream: a few latent frames at a time on the device, each chunk moved to the CPU at once.

The official pipeline decodes in chunks of 8 too, but concatenates every chunk into one (1, 3, N, H, W)
tensor before anything else runs; here the frames are yielded one by one so the next stage (interpolation,
then the video writer) can consume them while the rest are still latents.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

logger = logging.getLogger(__name__)

SVD_LATENT_SCALE = 0.18215
OFFICIAL_DECODE_CHUNK = 8

DecodeChunk = Callable[[torch.Tensor], torch.Tensor]
OnChunk = Callable[[int, int], None]


class TemporalVae(Protocol):
    """The part of diffusers' AutoencoderKLTemporalDecoder that decoding needs."""

    def decode(self, z: torch.Tensor, num_frames: int) -> object: ...


def vae_chunk_decoder(vae: TemporalVae) -> DecodeChunk:
    """Adapt an AutoencoderKLTemporalDecoder: k unscaled latents -> k images in [-1, 1] on the device.

    `num_frames` must be the chunk length: the temporal decoder mixes frames within one call.
    """

    def decode_chunk(latents: torch.Tensor) -> torch.Tensor:
        return vae.decode(latents, num_frames=latents.shape[0]).sample

    return decode_chunk


def decode_stream(
    latents: torch.Tensor,
    decode_chunk: DecodeChunk,
    *,
    chunk_size: int = OFFICIAL_DECODE_CHUNK,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    on_chunk: OnChunk | None = None,
) -> Iterator[torch.Tensor]:
    """Yield decoded frames [3,H,W] float32 on the CPU in [0,1], decoding `chunk_size` latents at a time.

    `latents` are [N,4,h,w] scaled by 0.18215 (they stay where they are; only one chunk goes to the device).
    `on_chunk(frames_done, frames_total)` runs after each chunk reaches the CPU; it may raise to cancel.
    """
    if latents.ndim != 4:
        raise ValueError(f"latents must be [N,4,h,w], got shape {tuple(latents.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    total = latents.shape[0]
    for start in range(0, total, chunk_size):
        chunk = latents[start : start + chunk_size].to(device=device, dtype=dtype) / SVD_LATENT_SCALE
        with torch.inference_mode():
            images = decode_chunk(chunk)
        # Map to [0,1] on the device (cheap), then leave it at once: only this chunk ever lives there.
        images_cpu = (images.float() * 0.5 + 0.5).clamp_(0.0, 1.0).to("cpu")
        del images, chunk
        if images_cpu.shape[0] != min(chunk_size, total - start):
            raise ValueError(f"decoder returned {images_cpu.shape[0]} frames for a chunk of "
                             f"{min(chunk_size, total - start)}")
        done = start + images_cpu.shape[0]
        if on_chunk is not None:
            on_chunk(done, total)
        logger.debug("decoded frames %d..%d of %d", start, done, total)
        # Clone per frame so a consumer that keeps one frame does not pin the whole chunk.
        for frame in images_cpu:
            yield frame.clone()
