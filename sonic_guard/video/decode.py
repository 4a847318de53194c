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
OnDowngrade = Callable[[int, int], None]


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
    on_downgrade: OnDowngrade | None = None,
) -> Iterator[torch.Tensor]:
    """Yield decoded frames [3,H,W] float32 on the CPU in [0,1], decoding `chunk_size` latents at a time.

    `latents` are [N,4,h,w] scaled by 0.18215 (they stay where they are; only one chunk goes to the device).
    `on_chunk(frames_done, frames_total)` runs after each chunk reaches the CPU; it may raise to cancel.
    When a chunk runs out of device memory the chunk size is halved and the same frames are decoded again,
    so the frames already handed on stay valid; `on_downgrade(old_size, new_size)` is told (it may also free
    memory). Out of memory with chunks of one frame is raised.
    """
    if latents.ndim != 4:
        raise ValueError(f"latents must be [N,4,h,w], got shape {tuple(latents.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    total = latents.shape[0]
    start = 0
    while start < total:
        count = min(chunk_size, total - start)
        images = _decode_or_none(latents[start : start + count], decode_chunk, device, dtype)
        if images is None:  # out of memory; handled here, after the except block has released its frames
            if chunk_size == 1:
                raise torch.OutOfMemoryError(f"decoding one latent frame ran out of memory on {device}")
            smaller = (count + 1) // 2
            logger.warning("VAE decode ran out of memory with %d frames per chunk; retrying with %d",
                           chunk_size, smaller)
            if on_downgrade is not None:
                on_downgrade(chunk_size, smaller)
            chunk_size = smaller
            continue
        if images.shape[0] != count:
            raise ValueError(f"decoder returned {images.shape[0]} frames for a chunk of {count}")
        start += count
        if on_chunk is not None:
            on_chunk(start, total)
        logger.debug("decoded frames up to %d of %d", start, total)
        # Clone per frame so a consumer that keeps one frame does not pin the whole chunk.
        for frame in images:
            yield frame.clone()
        del images


def _decode_or_none(
    latents: torch.Tensor, decode_chunk: DecodeChunk, device: str | torch.device, dtype: torch.dtype
) -> torch.Tensor | None:
    """One chunk decoded and already on the CPU in [0,1], or None when the device ran out of memory."""
    try:
        chunk = latents.to(device=device, dtype=dtype) / SVD_LATENT_SCALE
        with torch.inference_mode():
            images = decode_chunk(chunk)
        # Map to [0,1] on the device (cheap), then leave it at once: only this chunk ever lives there.
        return (images.float() * 0.5 + 0.5).clamp_(0.0, 1.0).to("cpu")
    except torch.OutOfMemoryError:
        return None
