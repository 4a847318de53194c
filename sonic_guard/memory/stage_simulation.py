"""One simulated pass per stage of a run: the engine's modules at the planned shapes on the meta device.

Each function returns the activation peak in bytes (weights excluded): inputs created on the device for the stage
count, as they do in the real run. Attention is modelled per the plan's backend (`AttentionModel`). With a
`MetaOpMemo` (the estimator's) repeated ops are answered from it while the bytes are counted the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.configs import ModelConfigs
from .attention_model import AttentionModel
from .meta_op_memo import MetaOpMemo
from .plan import FIXED_MODEL_DTYPES, ExecutionPlan
from .tracker import LiveBytesTracker

META = torch.device("meta")
CFG_BRANCHES = 3
WHISPER_DTYPE = getattr(torch, FIXED_MODEL_DTYPES["whisper"])  # fp32 whatever the run's dtype, as the official
RIFE_DTYPE = getattr(torch, FIXED_MODEL_DTYPES["rife"])  # interpolation runs on fp32 frames
RIFE_PAIRS = 1  # frame pairs per interpolation call: decoded frames stream through one pair at a time


def _tracker(block: int, memo: MetaOpMemo | None, stage: str) -> LiveBytesTracker:
    return LiveBytesTracker(block) if memo is None else memo.tracker(block, stage)


def _empty(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(*shape, device=META, dtype=dtype)


def simulate_unet_window(unet: nn.Module, plan: ExecutionPlan, configs: ModelConfigs, block: int,
                         memo: MetaOpMemo | None = None) -> int:
    """One denoising window: `cfg_batch` branches x window frames through `SonicUNet.forward`.

    With sequential CFG (cfg_batch 1) the outputs of the earlier branches stay on the device until guidance
    combines them; they are added to the single call's peak.
    """
    dtype = plan.torch_dtype
    h, w = plan.latent_size
    frames = configs.window_frames
    batch = plan.cfg_batch
    cross_dim = int(unet.config["cross_attention_dim"])
    previous_chunking = getattr(unet, "feed_forward_chunks", None)
    unet.set_feed_forward_chunking(plan.ff_chunk)
    try:
        with torch.no_grad(), AttentionModel(plan.attention), _tracker(block, memo, "unet_window") as tracker:
            latents = _empty(frames, 4, h, w, dtype=dtype)
            sample = _empty(batch, frames, 8, h, w, dtype=dtype)
            clip = _empty(batch, 1, cross_dim, dtype=dtype)
            audio = _empty(batch, frames, configs.audio_tokens, cross_dim, dtype=dtype)
            time_ids = _empty(batch, 3, dtype=dtype)
            face_mask = _empty(1, 1, plan.height, plan.width, dtype=dtype)
            out = unet(sample, 1.0, clip, audio, time_ids, face_mask)
            held = [_empty(*out.shape, dtype=out.dtype) for _ in range(CFG_BRANCHES // batch - 1)]
            del latents, sample, clip, audio, time_ids, face_mask, out, held
    finally:
        unet.set_feed_forward_chunking(previous_chunking)
    return tracker.peak_bytes


def simulate_vae_decode(vae: nn.Module, plan: ExecutionPlan, block: int, memo: MetaOpMemo | None = None) -> int:
    """One decode chunk: `decode_chunk` latent frames through the temporal decoder."""
    h, w = plan.latent_size
    with torch.no_grad(), AttentionModel(plan.attention), _tracker(block, memo, "vae_decode") as tracker:
        latents = _empty(plan.decode_chunk, 4, h, w, dtype=plan.torch_dtype)
        scaled = latents / float(vae.config.scaling_factor)
        frames = vae.decode(scaled, num_frames=plan.decode_chunk).sample
        del latents, scaled, frames
    return tracker.peak_bytes


def simulate_vae_encode(vae: nn.Module, plan: ExecutionPlan, block: int, memo: MetaOpMemo | None = None) -> int:
    """The reference image through the VAE encoder (latent mean and mode)."""
    with torch.no_grad(), AttentionModel(plan.attention), _tracker(block, memo, "vae_encode") as tracker:
        image = _empty(1, 3, plan.height, plan.width, dtype=plan.torch_dtype)
        posterior = vae.encode(image).latent_dist
        latents = posterior.mode()
        del image, posterior, latents
    return tracker.peak_bytes


def simulate_clip(clip: nn.Module, plan: ExecutionPlan, block: int, memo: MetaOpMemo | None = None) -> int:
    """The 224 px CLIP image through the vision tower + projection (once per video)."""
    size = int(clip.config.image_size)
    with torch.no_grad(), AttentionModel(plan.attention), _tracker(block, memo, "clip_encode") as tracker:
        pixels = _empty(1, 3, size, size, dtype=plan.torch_dtype)
        embeds = clip(pixel_values=pixels).image_embeds
        del pixels, embeds
    return tracker.peak_bytes


def simulate_whisper(encoder: nn.Module, plan: ExecutionPlan, configs: ModelConfigs, block: int,
                     memo: MetaOpMemo | None = None) -> int:
    """One 30 s mel chunk through the whisper encoder (chunks run one at a time; features go to the host)."""
    mel_bins = int(encoder.config.num_mel_bins)
    with torch.no_grad(), AttentionModel(plan.attention), _tracker(block, memo, "audio_features") as tracker:
        mel = _empty(1, mel_bins, configs.whisper_frames, dtype=WHISPER_DTYPE)
        states = encoder(mel, output_hidden_states=True).hidden_states
        del mel, states
    return tracker.peak_bytes


def simulate_interpolation(rife: nn.Module, plan: ExecutionPlan, block: int, memo: MetaOpMemo | None = None) -> int:
    """One RIFE midpoint of two decoded frames at output size (fp32, padded to 32 inside `midpoint`)."""
    with torch.no_grad(), _tracker(block, memo, "interpolate") as tracker:
        first = _empty(RIFE_PAIRS, 3, plan.height, plan.width, dtype=RIFE_DTYPE)
        second = _empty(RIFE_PAIRS, 3, plan.height, plan.width, dtype=RIFE_DTYPE)
        middle = rife.midpoint(first, second)
        del first, second, middle
    return tracker.peak_bytes
