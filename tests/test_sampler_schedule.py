"""Sampler maths: Karras sigmas, timesteps, preconditioning, Euler v-step, guidance and circular windows."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from sonic_guard.errors import BadInputError
from sonic_guard.sampling.sampler import (
    combine_guidance,
    denoised_from_v,
    euler_step,
    karras_sigmas,
    scale_model_input,
    sigma_to_timestep,
    window_index_lists,
)

# diffusers' scheduler (the comparison reference) trips a numpy 2 deprecation warning in set_timesteps
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# spec 4.6 step 3: the sigmas of the official run at 25 steps
REFERENCE_SIGMAS = [
    700, 545.73, 421.57, 322.45, 244.02, 182.55, 134.85, 98.27, 70.54, 49.81, 34.54, 23.47, 15.59, 10.10,
    6.354, 3.870, 2.269, 1.273, 0.678, 0.339, 0.157, 0.0664, 0.0248, 0.0079, 0.002, 0.0,
]


def svd_scheduler() -> EulerDiscreteScheduler:
    """The SVD-xt scheduler config (spec 2.3), as an independent implementation to compare with."""
    return EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", timestep_type="continuous", use_karras_sigmas=True,
        sigma_min=0.002, sigma_max=700.0, timestep_spacing="leading", steps_offset=1,
    )


def test_karras_sigmas_match_the_reference_list() -> None:
    sigmas = karras_sigmas(25)
    assert sigmas.shape == (26,) and sigmas.dtype == torch.float32
    for got, want in zip(sigmas.tolist(), REFERENCE_SIGMAS):
        if want == 0:
            assert got == 0
        else:
            assert got == pytest.approx(want, rel=5e-3), (got, want)  # 3 significant digits
    assert sigmas[0] == 700.0 and abs(sigmas[-2].item() - 0.002) < 1e-9
    assert torch.all(sigmas[:-1] > sigmas[1:])


@pytest.mark.parametrize("steps", [1, 4, 25, 40])
def test_karras_sigmas_and_timesteps_equal_diffusers(steps: int) -> None:
    scheduler = svd_scheduler()
    scheduler.set_timesteps(steps)
    ours = karras_sigmas(steps)
    assert torch.allclose(ours, scheduler.sigmas, rtol=1e-6, atol=0)
    timesteps = torch.tensor([sigma_to_timestep(s) for s in ours[:-1].tolist()], dtype=torch.float32)
    assert torch.allclose(timesteps, scheduler.timesteps, rtol=1e-5, atol=1e-6)


def test_timestep_end_points() -> None:
    assert sigma_to_timestep(700.0) == pytest.approx(1.6378, abs=1e-4)
    assert sigma_to_timestep(0.002) == pytest.approx(-1.5537, abs=1e-4)


def test_bad_step_count_is_a_user_error() -> None:
    with pytest.raises(BadInputError, match="steps"):
        karras_sigmas(0)


def test_scale_and_euler_step_equal_diffusers_v_prediction() -> None:
    scheduler = svd_scheduler()
    scheduler.set_timesteps(25)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, 6, 6, generator=gen) * 50
    v = torch.randn(5, 4, 6, 6, generator=gen)
    for i in (0, 7, 23, 24):  # 24: the last step, down to sigma 0
        t = scheduler.timesteps[i]
        sigma, sigma_next = scheduler.sigmas[i].item(), scheduler.sigmas[i + 1].item()
        scheduler._step_index = None  # as the reference does before every window
        assert torch.allclose(scale_model_input(x, sigma), scheduler.scale_model_input(x, t), rtol=1e-6)
        want = scheduler.step(v, t, x).prev_sample
        got = euler_step(x, v, sigma, sigma_next)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), i
    # the last step lands exactly on the clean estimate
    assert torch.allclose(euler_step(x, v, 0.002, 0.0), denoised_from_v(x, v, 0.002), atol=1e-6)


def test_denoised_from_v_formula() -> None:
    x, v, sigma = torch.tensor([3.0]), torch.tensor([2.0]), 4.0
    expected = 3.0 / 17.0 - 2.0 * 4.0 / math.sqrt(17.0)
    assert denoised_from_v(x, v, sigma).item() == pytest.approx(expected, rel=1e-6)


def test_combine_guidance() -> None:
    u, d, c = torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([4.0])
    assert combine_guidance(u, d, c).item() == pytest.approx(1 + 2.0 * 1 + 7.5 * 2)
    assert combine_guidance(u, d, c, appearance_scale=1.0, audio_scale=1.0).item() == pytest.approx(4.0)


def test_windows_exact_multiple_without_shift() -> None:
    assert window_index_lists(50) == [list(range(25)), list(range(25, 50))]


def test_windows_rotate_with_shift() -> None:
    lists = window_index_lists(50, shift=7)
    assert lists[0] == list(range(43, 50)) + list(range(0, 18))
    assert lists[1] == list(range(18, 43))


def test_windows_not_a_multiple_wrap_onto_the_first_frames() -> None:
    lists = window_index_lists(30)
    assert lists == [list(range(25)), list(range(25, 30)) + list(range(20))]
    counts = Counter(i for w in lists for i in w)
    assert all(counts[i] == 2 for i in range(20)) and all(counts[i] == 1 for i in range(20, 30))
    shifted = window_index_lists(30, shift=14)
    assert shifted[0][0] == 16 and shifted[1][0] == 11 and shifted[1][-1] == 5


def test_windows_shorter_clip_repeats_frames() -> None:
    lists = window_index_lists(10, shift=3)
    assert len(lists) == 1 and len(lists[0]) == 25
    assert lists[0][:10] == [7, 8, 9, 0, 1, 2, 3, 4, 5, 6]
    assert lists[0][10:20] == lists[0][:10]
    assert window_index_lists(1) == [[0] * 25]


@pytest.mark.parametrize("num_frames", [24, 25, 26, 99, 1000, 1001])
@pytest.mark.parametrize("shift", [0, 7, 168, 175])
def test_windows_cover_every_frame_with_full_windows(num_frames: int, shift: int) -> None:
    lists = window_index_lists(num_frames, shift=shift)
    assert len(lists) == math.ceil(num_frames / 25)
    assert all(len(w) == 25 for w in lists)
    covered = {i for w in lists for i in w}
    assert covered == set(range(num_frames))
    # every window is a run of consecutive frames modulo N
    for w in lists:
        assert all((b - a) % num_frames == 1 % num_frames for a, b in zip(w, w[1:]))
    # a shift of N frames is no shift at all
    assert window_index_lists(num_frames, shift=shift + num_frames) == lists
