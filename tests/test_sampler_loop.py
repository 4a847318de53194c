"""The whole-clip sampling loop against a plain re-implementation built on diffusers' Euler scheduler."""

from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from sonic_guard.sampling.sampler import initial_latents, sample_latents

# diffusers' scheduler (the comparison reference) trips a numpy 2 deprecation warning in set_timesteps
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H = W = 4


def toy_denoiser(model_input: torch.Tensor, sigma: float, indices: list[int]) -> torch.Tensor:
    """A deterministic stand-in for the guided UNet that mixes frames inside the window, so window
    composition (shift, wrap, repeats) changes the result, and that depends on the absolute frame index."""
    assert model_input.device.type == "cpu" and model_input.dtype == torch.float32
    position = torch.tensor(indices, dtype=torch.float32)[:, None, None, None]
    window_mean = model_input.mean(dim=0, keepdim=True)
    return 0.6 * model_input + 0.3 * window_mean + 0.01 * torch.sin(position) + 0.001 * sigma ** 0.5


def plain_reference(reference: torch.Tensor, num_frames: int, steps: int, seed: int,
                    shift_offset: int = 7) -> torch.Tensor:
    """Spec 4.6 step 6 written out literally, one frame at a time, with diffusers' scheduler."""
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", timestep_type="continuous", use_karras_sigmas=True,
        sigma_min=0.002, sigma_max=700.0, timestep_spacing="leading", steps_offset=1,
    )
    scheduler.set_timesteps(steps)
    noise = torch.randn((num_frames, *reference.shape), generator=torch.Generator().manual_seed(seed))
    latents = reference[None] + noise * scheduler.sigmas[0]
    shift = 0
    for i, t in enumerate(scheduler.timesteps):
        pred = torch.zeros_like(latents)
        counter = torch.zeros(num_frames)
        for start in range(0, num_frames, 25):
            idx = [(start - shift + j) % num_frames for j in range(25)]
            window = latents[idx]
            scheduler._step_index = None
            model_input = scheduler.scale_model_input(window, t)
            v = toy_denoiser(model_input, scheduler.sigmas[i].item(), idx)
            out = scheduler.step(v, t, window).prev_sample
            for j, frame in enumerate(idx):
                pred[frame] += out[j]
                counter[frame] += 1
        latents = pred / counter[:, None, None, None]
        shift += shift_offset
    return latents


@pytest.fixture()
def reference() -> torch.Tensor:
    return torch.randn(4, H, W, generator=torch.Generator().manual_seed(11)) * 0.8


@pytest.mark.parametrize(("num_frames", "steps"), [(10, 6), (30, 5), (50, 4), (61, 3)])
def test_matches_plain_reference_loop(reference: torch.Tensor, num_frames: int, steps: int) -> None:
    got = sample_latents(reference, num_frames, steps, toy_denoiser, seed=5)
    want = plain_reference(reference, num_frames, steps, seed=5)
    assert got.shape == (num_frames, 4, H, W) and got.dtype == torch.float32 and got.device.type == "cpu"
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (got - want).abs().max()


def test_shift_offset_changes_the_result(reference: torch.Tensor) -> None:
    a = sample_latents(reference, 30, 3, toy_denoiser, seed=1, shift_offset=7)
    b = sample_latents(reference, 30, 3, toy_denoiser, seed=1, shift_offset=0)
    assert not torch.allclose(a, b)
    assert torch.allclose(b, plain_reference(reference, 30, 3, seed=1, shift_offset=0), rtol=1e-4, atol=1e-4)


def test_bit_for_bit_deterministic_and_seeded(reference: torch.Tensor) -> None:
    first = sample_latents(reference, 30, 3, toy_denoiser, seed=0)
    second = sample_latents(reference, 30, 3, toy_denoiser, seed=0)
    assert torch.equal(first, second)
    other = sample_latents(reference, 30, 3, toy_denoiser, seed=1)
    assert not torch.allclose(first, other)


def test_initial_latents_use_only_the_seeded_generator(reference: torch.Tensor) -> None:
    torch.manual_seed(123)  # the global RNG must not matter
    a = initial_latents(reference, 3, 700.0, seed=0)
    torch.manual_seed(456)
    b = initial_latents(reference, 3, 700.0, seed=0)
    assert torch.equal(a, b)
    noise = torch.randn((3, 4, H, W), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, reference[None] + noise * 700.0)


def test_on_window_ticks_after_every_window(reference: torch.Tensor) -> None:
    ticks: list[tuple[int, int]] = []
    sample_latents(reference, 60, 4, toy_denoiser, seed=0, on_window=lambda d, t: ticks.append((d, t)))
    assert ticks == [(d, 12) for d in range(1, 13)]  # 3 windows x 4 steps


class Cancelled(RuntimeError):
    pass


def test_on_window_exception_propagates_and_stops(reference: torch.Tensor) -> None:
    calls: list[int] = []

    def counting(x: torch.Tensor, sigma: float, indices: list[int]) -> torch.Tensor:
        calls.append(len(indices))
        return toy_denoiser(x, sigma, indices)

    def cancel_at_three(done: int, total: int) -> None:
        if done == 3:
            raise Cancelled("user pressed cancel")

    with pytest.raises(Cancelled):
        sample_latents(reference, 60, 4, counting, seed=0, on_window=cancel_at_three)
    assert len(calls) == 3


def test_windows_receive_scaled_input_and_exact_indices(reference: torch.Tensor) -> None:
    seen: list[tuple[float, list[int], float]] = []

    def recording(x: torch.Tensor, sigma: float, indices: list[int]) -> torch.Tensor:
        seen.append((sigma, list(indices), x.std().item()))
        return toy_denoiser(x, sigma, indices)

    sample_latents(reference, 30, 2, recording, seed=0)
    assert [s[1] for s in seen] == [
        list(range(25)), list(range(25, 30)) + list(range(20)),
        list(range(23, 30)) + list(range(18)), list(range(18, 30)) + list(range(13)),
    ]
    assert seen[0][0] == pytest.approx(700.0)
    # at sigma 700 the scaled input has about unit variance (x / sqrt(sigma^2 + 1))
    assert 0.8 < seen[0][2] < 1.2
