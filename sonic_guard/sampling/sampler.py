"""Euler sampler for Sonic: Karras sigmas, v-prediction, circular 25-frame windows with a time-aware shift.

Behaviour follows the reference pipeline (spec 4.6 steps 3-6): every step denoises the clip in windows of
`window` frames whose start rotates by `shift_offset` frames per step, indexing wraps around the clip, and
frames covered by several windows are averaged. Whole-clip latents and accumulators stay on the CPU in
float32; the `DenoiseWindow` callable moves one window at a time to the compute device.

Seams between segments of long audio (ours, not the reference's): `anchor_latents` pins the first k frames to
the previous segment's last k final latents, inpainting-style. Before every step those frames are replaced by
anchor + sigma * noise (the run's own seeded noise), so the windows denoise the new frames in temporal attention
next to frames that are already decided; at the end they equal the anchor exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

from ..errors import BadInputError

logger = logging.getLogger(__name__)

VAE_SCALING_FACTOR = 0.18215

# (latents after scale_model_input [F, 4, h, w], sigma, frame indices) -> guided v-prediction [F, 4, h, w]
DenoiseWindow = Callable[[torch.Tensor, float, list[int]], torch.Tensor]
WindowCallback = Callable[[int, int], None]


class WindowExchange(Protocol):
    """Ranks of one run that split each step's windows round-robin (see `sonic_guard.distributed`).

    `gather(mine)` is collective: every rank passes its window's stepped latents (all windows have the same
    shape) and gets every rank's, in rank order, on the CPU in float32.
    """

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def gather(self, mine: torch.Tensor) -> list[torch.Tensor]: ...


def karras_sigmas(
    steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0
) -> torch.Tensor:
    """Karras et al. (2022) noise levels, high to low, with a final 0: float32 [steps + 1]."""
    if steps < 1:
        raise BadInputError(
            problem=f"steps is {steps}", expected="at least 1 denoising step (25 is the default)",
            fix="set steps to 1 or more",
        )
    # float64 then float32, as the reference scheduler does (numpy, then a float32 tensor)
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def sigma_to_timestep(sigma: float) -> float:
    """Continuous timestep the UNet's time projection receives: 0.25 * ln(sigma)."""
    return 0.25 * math.log(sigma)


def scale_model_input(latents: torch.Tensor, sigma: float) -> torch.Tensor:
    """Input preconditioning of the Euler scheduler: x / sqrt(sigma^2 + 1)."""
    return latents / math.sqrt(sigma * sigma + 1.0)


def denoised_from_v(latents: torch.Tensor, v_prediction: torch.Tensor, sigma: float) -> torch.Tensor:
    """Clean-sample estimate of a v-prediction model at noise level sigma."""
    return latents / (sigma * sigma + 1.0) - v_prediction * (sigma / math.sqrt(sigma * sigma + 1.0))


def euler_step(
    latents: torch.Tensor, v_prediction: torch.Tensor, sigma: float, sigma_next: float
) -> torch.Tensor:
    """One deterministic Euler step (s_churn = 0) from sigma to sigma_next."""
    derivative = (latents - denoised_from_v(latents, v_prediction, sigma)) / sigma
    return latents + derivative * (sigma_next - sigma)


def combine_guidance(
    uncond: torch.Tensor,
    drop_audio: torch.Tensor,
    cond: torch.Tensor,
    appearance_scale: float = 2.0,
    audio_scale: float = 7.5,
) -> torch.Tensor:
    """Sonic's 3-way classifier-free guidance: u + g1 * (d - u) + g2 * (c - d)."""
    return uncond + appearance_scale * (drop_audio - uncond) + audio_scale * (cond - drop_audio)


def window_index_lists(num_frames: int, window: int = 25, shift: int = 0) -> list[list[int]]:
    """Frame indices of every window in one step; circular, so each list has exactly `window` entries.

    Window starts are 0, window, 2*window, ... < num_frames; entry j of the window at s is
    (s - shift + j) mod num_frames. With num_frames < window a window repeats frames.
    """
    if num_frames < 1 or window < 1:
        raise ValueError(f"num_frames and window must be >= 1, got {num_frames}, {window}")
    return [[(s - shift + j) % num_frames for j in range(window)] for s in range(0, num_frames, window)]


def initial_latents(
    reference_latent: torch.Tensor, num_frames: int, sigma_max: float, seed: int
) -> torch.Tensor:
    """reference (already x0.18215) + sigma_0 * noise, noise from a CPU generator seeded with `seed`.

    The noise is the only random draw of a run (the reference's unused noise-augmentation and per-step draws
    are not reproduced), so a seed gives the same clip on any device.
    """
    noise = initial_noise(reference_latent, num_frames, seed)
    return reference_latent.detach().to("cpu", torch.float32)[None] + noise * sigma_max


def initial_noise(reference_latent: torch.Tensor, num_frames: int, seed: int) -> torch.Tensor:
    """Unit noise [num_frames, 4, h, w] from a CPU generator seeded with `seed`."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn((num_frames, *reference_latent.shape), generator=generator, dtype=torch.float32)


def sample_latents(
    reference_latent: torch.Tensor,
    num_frames: int,
    steps: int,
    denoise_window: DenoiseWindow,
    *,
    seed: int,
    window: int = 25,
    shift_offset: int = 7,
    on_window: WindowCallback | None = None,
    anchor_latents: torch.Tensor | None = None,
    exchange: WindowExchange | None = None,
) -> torch.Tensor:
    """Denoise a whole clip: float32 latents [num_frames, 4, h, w] on the CPU, still x0.18215 scaled.

    `denoise_window(x, sigma, indices)` gets the window's latents after `scale_model_input` and returns the
    guided v-prediction. `on_window(done, total)` runs after every window (progress, cancellation); whatever
    it raises propagates. `anchor_latents` [k, 4, h, w] (k < num_frames) holds the first k frames fixed (see
    the module docstring); the returned first k frames equal it. With `exchange`, this rank denoises only the
    windows it owns (window i belongs to rank i mod world_size) and every rank gets every window's result; each
    rank then sums them in the single-process order, so all ranks return the single-process latents bit for bit.
    """
    if reference_latent.dim() != 3:
        raise ValueError(f"reference_latent must be [4, h, w], got {tuple(reference_latent.shape)}")
    anchor = _checked_anchor(anchor_latents, reference_latent, num_frames)
    if num_frames < 1:
        raise BadInputError(
            problem=f"The clip has {num_frames} frames to generate",
            expected="at least one frame (0.08 s of audio)", fix="use a longer audio clip",
        )
    sigmas = karras_sigmas(steps).tolist()
    noise = initial_noise(reference_latent, num_frames, seed)
    latents = reference_latent.detach().to("cpu", torch.float32)[None] + noise * sigmas[0]
    # anchored frames follow the run's own noise draw, so the anchor costs no extra randomness
    anchor_noise = None if anchor is None else noise[: len(anchor)].clone()
    del noise
    windows_per_step = len(range(0, num_frames, window))
    total, done, shift = steps * windows_per_step, 0, 0
    logger.debug("sampling %d frames: %d steps x %d windows", num_frames, steps, windows_per_step)
    for step in range(steps):
        sigma, sigma_next = sigmas[step], sigmas[step + 1]
        if anchor is not None and anchor_noise is not None:  # inpainting: re-noise the anchor to this level
            latents[: len(anchor)] = anchor + sigma * anchor_noise
        summed = torch.zeros_like(latents)
        counts = torch.zeros(num_frames, dtype=torch.float32)
        lists = window_index_lists(num_frames, window, shift)
        for indices, stepped in _stepped_windows(latents, lists, sigma, sigma_next, denoise_window, exchange):
            index = torch.tensor(indices, dtype=torch.long)
            # the reference adds frame by frame, so a frame repeated inside a window (clips shorter than a
            # window) is summed and counted every time; index_add_ does that, indexed += would keep one copy
            summed.index_add_(0, index, stepped)
            counts.index_add_(0, index, torch.ones(len(indices)))
            done += 1
            if on_window is not None:
                on_window(done, total)
        latents = summed / counts[:, None, None, None]
        shift += shift_offset
    if anchor is not None:
        latents[: len(anchor)] = anchor  # the last sigma is 0: the anchored frames end exactly on the anchor
    return latents


def _stepped_window(
    latents: torch.Tensor, indices: list[int], sigma: float, sigma_next: float, denoise_window: DenoiseWindow
) -> torch.Tensor:
    current = latents[torch.tensor(indices, dtype=torch.long)]
    v_prediction = denoise_window(scale_model_input(current, sigma), sigma, indices)
    return euler_step(current, v_prediction.to("cpu", torch.float32), sigma, sigma_next)


def _stepped_windows(
    latents: torch.Tensor, lists: list[list[int]], sigma: float, sigma_next: float,
    denoise_window: DenoiseWindow, exchange: WindowExchange | None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(indices, stepped latents) of every window of one step, in window order.

    Lazy, so a single process still denoises, accumulates and reports one window at a time. With an exchange,
    windows go in rounds of world_size: each rank steps its own window of the round, then all gather.
    """
    if exchange is None:
        for indices in lists:
            yield indices, _stepped_window(latents, indices, sigma, sigma_next, denoise_window)
        return
    world, rank = exchange.world_size, exchange.rank
    for start in range(0, len(lists), world):
        batch = lists[start : start + world]
        if rank < len(batch):
            mine = _stepped_window(latents, batch[rank], sigma, sigma_next, denoise_window)
        else:  # the last round has fewer windows than ranks: idle ranks still take part in the collective
            mine = latents.new_zeros((len(batch[0]), *latents.shape[1:]))
        yield from zip(batch, exchange.gather(mine)[: len(batch)])


def _checked_anchor(
    anchor_latents: torch.Tensor | None, reference_latent: torch.Tensor, num_frames: int
) -> torch.Tensor | None:
    if anchor_latents is None or len(anchor_latents) == 0:
        return None
    if anchor_latents.dim() != 4 or tuple(anchor_latents.shape[1:]) != tuple(reference_latent.shape):
        raise ValueError(
            f"anchor_latents must be [k, {', '.join(map(str, reference_latent.shape))}], "
            f"got {tuple(anchor_latents.shape)}"
        )
    if len(anchor_latents) >= num_frames:
        raise ValueError(f"{len(anchor_latents)} anchor frames leave none of the {num_frames} frames to generate")
    return anchor_latents.detach().to("cpu", torch.float32)
