"""The guided denoiser of one window: Sonic's 3-branch classifier-free guidance around the UNet.

Branches, in the reference order (spec 4.6 step 1): uncond (zero CLIP, zero image latents, uncond audio),
drop-audio (real, real, uncond audio), cond (real, real, cond audio). The per-frame audio inputs are computed
once per clip with the audio adapters in float32 (as the reference does) and kept on the CPU; one window's
worth goes to the device per UNet call. `cfg_batch` trades speed for memory without changing the result:
3 runs the branches in one UNet call (the reference), 2 runs [drop-audio, cond] together and uncond alone,
1 runs one branch at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..conditioning.audio_features import AudioFeatures
from ..models.audio_adapters import raw_to_bucket
from .sampler import DenoiseWindow, combine_guidance, sigma_to_timestep

logger = logging.getLogger(__name__)

FPS_ID = 12.5  # the reference passes the generated frame rate, not reduced by 1 (spec quirk 2)
CFG_BATCH_GROUPS: dict[int, tuple[tuple[int, ...], ...]] = {
    3: ((0, 1, 2),),
    2: ((0,), (1, 2)),
    1: ((0,), (1,), (2,)),
}


@dataclass(frozen=True)
class ClipConditioning:
    """Everything per clip that the windows read; tensors on the CPU.

    reference_latent: [4, h, w] VAE mean x 0.18215 (the start of the initial latents).
    conditioning_latent: [4, h, w] VAE mode, unscaled (SVD convention), concatenated to every frame.
    clip_embeds: [1, 1, D] CLIP image embeddings. face_mask: [1, 1, H, W] in [0, 1], or None.
    frame_buckets: [N, 2] motion buckets per generated frame (see `compute_frame_buckets`).
    """

    reference_latent: torch.Tensor
    conditioning_latent: torch.Tensor
    clip_embeds: torch.Tensor
    face_mask: torch.Tensor | None
    frame_buckets: torch.Tensor
    features: AudioFeatures

    @property
    def num_frames(self) -> int:
        return self.features.num_generated_frames


@torch.no_grad()
def compute_frame_buckets(
    motion_bucket_predictor: nn.Module,
    features: AudioFeatures,
    clip_embeds: torch.Tensor,
    *,
    device: str | torch.device,
    chunk: int = 64,
) -> torch.Tensor:
    """Motion buckets (raw * 16 + 16) of every generated frame: float32 [N, 2] on the CPU.

    The predictor (on `device`, float32) treats frames independently, so `chunk` frames share one call.
    """
    clip = clip_embeds.reshape(1, 1, -1).to(device=device, dtype=torch.float32)
    n = features.num_generated_frames
    out = torch.empty(n, 2, dtype=torch.float32)
    for start in range(0, n, chunk):
        frames = range(start, min(n, start + chunk))
        audio = features.bucket_windows(frames)[None].to(device=device, dtype=torch.float32)
        raw = motion_bucket_predictor(audio, clip)  # [1, len, 2, 1]
        out[start : start + len(frames)] = raw_to_bucket(raw).reshape(len(frames), 2).to("cpu", torch.float32)
    return out


@torch.no_grad()
def compute_audio_tokens(
    audio_token_projector: nn.Module,
    features: AudioFeatures,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    chunk: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond tokens [N, T, D] on the CPU, uncond tokens [T, D] on `device`), both stored in `dtype`.

    The projector (on `device`) runs in float32; the results are cast to the UNet dtype, as the reference
    does when it stacks the tokens for the UNet.
    """
    n = features.num_generated_frames
    pieces: list[torch.Tensor] = []
    for start in range(0, n, chunk):
        windows = features.token_windows(range(start, min(n, start + chunk)))
        tokens = audio_token_projector(windows[None].to(device=device, dtype=torch.float32))[0]
        pieces.append(tokens.to(device="cpu", dtype=dtype))
    # the reference feeds all-zero windows for the uncond tokens; one frame suffices (they are constant)
    zeros = torch.zeros((1, *features.token_windows([0]).shape), dtype=torch.float32, device=device)
    uncond = audio_token_projector(zeros)[0, 0].to(dtype)
    return torch.cat(pieces, dim=0), uncond


def make_denoise_window(
    unet: nn.Module,
    audio_token_projector: nn.Module,
    conditioning: ClipConditioning,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    cfg_batch: int = 3,
    appearance_scale: float = 2.0,
    audio_scale: float = 7.5,
    dynamic_scale: float = 1.0,
) -> DenoiseWindow:
    """Build the guided denoiser for one clip; the UNet and the projector must already be on `device`."""
    if cfg_batch not in CFG_BATCH_GROUPS:
        raise ValueError(f"cfg_batch must be 1, 2 or 3, got {cfg_batch}")
    n = conditioning.num_frames
    if tuple(conditioning.frame_buckets.shape) != (n, 2):
        raise ValueError(f"frame_buckets must be [{n}, 2], got {tuple(conditioning.frame_buckets.shape)}")
    cond_tokens, uncond_tokens = compute_audio_tokens(audio_token_projector, conditioning.features,
                                                      device=device, dtype=dtype)
    clip = conditioning.clip_embeds.reshape(1, 1, -1).to(device=device, dtype=dtype)
    clip_branches = torch.cat([torch.zeros_like(clip), clip, clip])  # [3, 1, D]
    latent = conditioning.conditioning_latent.to(device=device, dtype=dtype)
    mask = None if conditioning.face_mask is None else conditioning.face_mask.to(device=device, dtype=dtype)
    buckets = conditioning.frame_buckets.to(device="cpu", dtype=torch.float32)
    groups = CFG_BATCH_GROUPS[cfg_batch]

    @torch.no_grad()
    def denoise_window(model_input: torch.Tensor, sigma: float, frame_indices: list[int]) -> torch.Tensor:
        frames = len(frame_indices)
        index = torch.tensor(frame_indices, dtype=torch.long)
        x = model_input.to(device=device, dtype=dtype)
        real = torch.cat([x, latent.expand(frames, *latent.shape)], dim=1)  # [F, 8, h, w]
        zero = torch.cat([x, torch.zeros_like(x)], dim=1)
        samples = torch.stack([zero, real, real])  # [3, F, 8, h, w]
        uncond = uncond_tokens.expand(frames, *uncond_tokens.shape)
        cond = cond_tokens[index].to(device=device)
        tokens = torch.stack([uncond, uncond, cond])  # [3, F, T, D]
        # window-mean buckets, in the UNet dtype as the reference builds added_time_ids
        bucket = buckets[index].mean(dim=0) * dynamic_scale
        time_ids = torch.tensor([FPS_ID, float(bucket[0]), float(bucket[1])], dtype=dtype, device=device)
        timestep = torch.tensor(sigma_to_timestep(sigma), dtype=torch.float32, device=device)
        outputs: dict[int, torch.Tensor] = {}
        for group in groups:
            picked = list(group)
            result = unet(samples[picked], timestep, clip_branches[picked], tokens[picked],
                          time_ids.expand(len(picked), 3), mask)
            for slot, branch in enumerate(picked):
                outputs[branch] = result[slot].to(device="cpu", dtype=torch.float32)
            del result  # free the group's activations before the next UNet call
        return combine_guidance(outputs[0], outputs[1], outputs[2], appearance_scale, audio_scale)

    return denoise_window
