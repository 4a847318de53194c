"""Seam anchors in the sampler, a segment's audio features, and when a job is split into segments."""

from __future__ import annotations

import pytest
import torch

from sonic_guard.conditioning.audio_features import AudioFeatures
from sonic_guard.errors import BadInputError
from sonic_guard.runs.segment_inputs import features_for_frames, segment_frames_for
from sonic_guard.sampling.sampler import sample_latents

H = W = 4


def mixing_denoiser(model_input: torch.Tensor, sigma: float, indices: list[int]) -> torch.Tensor:
    """Stands in for the UNet's temporal attention: every frame's prediction reads the window mean."""
    position = torch.tensor(indices, dtype=torch.float32)[:, None, None, None]
    return 0.5 * model_input + 0.4 * model_input.mean(dim=0, keepdim=True) + 0.01 * torch.cos(position)


@pytest.fixture()
def reference() -> torch.Tensor:
    return torch.randn(4, H, W, generator=torch.Generator().manual_seed(3))


def test_anchored_frames_end_on_the_anchor_and_steer_the_rest(reference: torch.Tensor) -> None:
    anchor = torch.randn(5, 4, H, W, generator=torch.Generator().manual_seed(9)) * 2.0
    first = sample_latents(reference, 30, 4, mixing_denoiser, seed=7, anchor_latents=anchor)
    second = sample_latents(reference, 30, 4, mixing_denoiser, seed=7, anchor_latents=anchor)
    assert torch.equal(first, second)  # deterministic
    assert torch.equal(first[:5], anchor)  # the anchored frames are exactly the previous segment's latents
    free = sample_latents(reference, 30, 4, mixing_denoiser, seed=7)
    # the new frames were denoised next to the anchor, so they differ from an unanchored run's
    assert not torch.allclose(first[5:], free[5:])
    other = sample_latents(reference, 30, 4, mixing_denoiser, seed=7, anchor_latents=anchor + 1.0)
    assert not torch.allclose(first[5:], other[5:])
    # an empty anchor is no anchor
    assert torch.equal(sample_latents(reference, 30, 4, mixing_denoiser, seed=7,
                                      anchor_latents=anchor[:0]), free)


def test_anchor_frames_are_replaced_before_every_step(reference: torch.Tensor) -> None:
    anchor = torch.full((3, 4, H, W), 0.25)
    seen: list[tuple[float, torch.Tensor]] = []

    def recording(model_input: torch.Tensor, sigma: float, indices: list[int]) -> torch.Tensor:
        rows = [indices.index(frame) for frame in range(3)]
        seen.append((sigma, model_input[rows].clone() * (sigma * sigma + 1.0) ** 0.5))
        return mixing_denoiser(model_input, sigma, indices)

    sample_latents(reference, 25, 3, recording, seed=1, anchor_latents=anchor)
    noise = torch.randn((25, 4, H, W), generator=torch.Generator().manual_seed(1))[:3]
    assert len(seen) == 3
    for sigma, latents in seen:  # anchor + sigma * (the run's own noise for those frames)
        assert torch.allclose(latents, anchor + sigma * noise, rtol=1e-4, atol=1e-3 * max(1.0, sigma))


def test_bad_anchors_are_refused(reference: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="anchor_latents must be"):
        sample_latents(reference, 10, 2, mixing_denoiser, seed=0, anchor_latents=torch.zeros(2, 4, H + 1, W))
    with pytest.raises(ValueError, match="leave none"):
        sample_latents(reference, 3, 2, mixing_denoiser, seed=0, anchor_latents=torch.zeros(3, 4, H, W))


def test_a_segments_features_are_the_clips_windows() -> None:
    frames_25fps = 41  # 20 generated frames
    rows = 2 * frames_25fps
    features = AudioFeatures(
        multi_layer=torch.randn(rows + 10, 5, 6), last_layer=torch.randn(rows + 50, 1, 6),
        num_frames_25fps=frames_25fps,
    )
    for start, stop in ((0, 7), (5, 13), (12, 20)):
        part = features_for_frames(features, start, stop)
        assert part.num_generated_frames == stop - start
        local = range(stop - start)
        assert torch.equal(part.token_windows(local), features.token_windows(range(start, stop)))
        assert torch.equal(part.bucket_windows(local), features.bucket_windows(range(start, stop)))


def test_when_a_job_is_segmented() -> None:
    assert segment_frames_for(29.0) is None  # automatic: one clip up to 30 s
    assert segment_frames_for(95.0) == 250  # automatic: 20 s segments at 12.5 generated frames per second
    assert segment_frames_for(10.0, 3.0) == 38
    assert segment_frames_for(2.5, 3.0) is None  # shorter than one segment
    for bad in (-1.0, 0.5):
        with pytest.raises(BadInputError, match="segment_seconds"):
            segment_frames_for(60.0, bad)
