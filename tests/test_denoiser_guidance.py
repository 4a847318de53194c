"""The guided window denoiser around a real, tiny SonicUNet and real (random) audio adapters."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from numerics import FLOAT32_EPS, fp32_tolerance, output_scale
from torch import nn

from sonic_guard.conditioning.audio_features import AudioFeatures
from sonic_guard.models.audio_adapters import AudioTokenProjector, MotionBucketPredictor
from sonic_guard.models.configs import SVD_XT_UNET_CONFIG
from sonic_guard.models.unet import build_sonic_unet
from sonic_guard.sampling.denoiser import (
    ClipConditioning,
    compute_audio_tokens,
    compute_frame_buckets,
    make_denoise_window,
)
from sonic_guard.sampling.sampler import combine_guidance, sample_latents, scale_model_input

C, D, T = 16, 64, 4  # whisper channels, cross-attention dim, audio tokens per frame
LATENT = 8
TINY_UNET = dict(
    SVD_XT_UNET_CONFIG, block_out_channels=[32, 64, 64, 64], num_attention_heads=[1, 2, 2, 2],
    cross_attention_dim=D, addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
    sample_size=LATENT,
)


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    torch.manual_seed(0)
    return build_sonic_unet(TINY_UNET)


@pytest.fixture(scope="module")
def projector() -> nn.Module:
    torch.manual_seed(1)
    return AudioTokenProjector(seq_len=10, blocks=5, channels=C, intermediate_dim=32, output_dim=D,
                               context_tokens=T).eval()


@pytest.fixture(scope="module")
def bucket_predictor() -> nn.Module:
    torch.manual_seed(2)
    return MotionBucketPredictor(seq_len=50, blocks=1, channels=C, clip_channels=D, intermediate_dim=32,
                                 output_dim=1, context_tokens=2).eval()


def make_features(num_frames_25fps: int, seed: int = 3) -> AudioFeatures:
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(2 * num_frames_25fps, 5, C, generator=gen)
    return AudioFeatures(
        multi_layer=torch.cat([torch.zeros(4, 5, C), states, torch.zeros(6, 5, C)]),
        last_layer=torch.cat([torch.zeros(24, 1, C), states[:, -1:], torch.zeros(26, 1, C)]),
        num_frames_25fps=num_frames_25fps,
    )


@pytest.fixture(scope="module")
def conditioning(bucket_predictor: nn.Module) -> ClipConditioning:
    gen = torch.Generator().manual_seed(4)
    features = make_features(12)  # 6 generated frames
    clip = torch.randn(1, 1, D, generator=gen)
    mask = torch.zeros(1, 1, 8 * LATENT, 8 * LATENT)
    mask[..., 16:48, 16:48] = 1.0
    return ClipConditioning(
        reference_latent=torch.randn(4, LATENT, LATENT, generator=gen) * 0.18215,
        conditioning_latent=torch.randn(4, LATENT, LATENT, generator=gen),
        clip_embeds=clip,
        face_mask=mask,
        frame_buckets=compute_frame_buckets(bucket_predictor, features, clip, device="cpu"),
        features=features,
    )


class RecordingUNet(nn.Module):
    """Passes every call through to the real UNet and keeps its arguments and output."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[tuple[torch.Tensor | None, ...], torch.Tensor]] = []

    def forward(self, *args: torch.Tensor | None) -> torch.Tensor:
        out = self.inner(*args)
        self.calls.append((args, out))
        return out


def test_buckets_equal_per_frame_reference_calls(bucket_predictor: nn.Module) -> None:
    features = make_features(14)
    clip = torch.randn(1, 1, D, generator=torch.Generator().manual_seed(5))
    buckets = compute_frame_buckets(bucket_predictor, features, clip, device="cpu", chunk=3)
    assert buckets.shape == (7, 2) and buckets.dtype == torch.float32
    predictor64 = copy.deepcopy(bucket_predictor).double()
    with torch.no_grad():  # the reference: one frame per call, raw * 16 + 16 (and the same in float64)
        reference = torch.stack([(bucket_predictor(features.bucket_windows([i])[None], clip) * 16 + 16).reshape(2)
                                 for i in range(7)])
        exact = torch.stack([(predictor64(features.bucket_windows([i])[None].double(), clip.double()) * 16 + 16)
                             .reshape(2) for i in range(7)])
    # Chunks of 3 and of 64 frames are other kernels than one frame per call: float32 noise, measured.
    atol = fp32_tolerance(reference, exact)
    torch.testing.assert_close(buckets, reference, rtol=0, atol=atol)
    torch.testing.assert_close(compute_frame_buckets(bucket_predictor, features, clip, device="cpu"), reference,
                               rtol=0, atol=atol)


def test_audio_tokens_cond_and_uncond(projector: nn.Module) -> None:
    features = make_features(10)
    cond, uncond = compute_audio_tokens(projector, features, device="cpu", dtype=torch.float32, chunk=2)
    assert cond.shape == (5, T, D) and uncond.shape == (T, D)
    with torch.no_grad():
        want = projector(features.token_windows([3])[None])[0, 0]
        exact = copy.deepcopy(projector).double()(features.token_windows([3])[None].double())[0, 0]
        zero = projector(torch.zeros(1, 1, 10, 5, C))[0, 0]
    # A chunk of 2 windows is another kernel than 1 window: float32 noise, measured.
    torch.testing.assert_close(cond[3], want, rtol=0, atol=fp32_tolerance(want, exact))
    assert torch.allclose(uncond, zero, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cond[0], cond[1])


def test_branches_are_assembled_as_the_reference(
    unet: nn.Module, projector: nn.Module, conditioning: ClipConditioning
) -> None:
    recorder = RecordingUNet(unet)
    denoise = make_denoise_window(recorder, projector, conditioning, device="cpu", dtype=torch.float32,
                                  dynamic_scale=1.5)
    indices = [5, 0, 1, 2]  # a wrapped window
    sigma = 34.54
    x = scale_model_input(torch.randn(4, 4, LATENT, LATENT) * sigma, sigma)
    guided = denoise(x, sigma, indices)
    assert guided.shape == (4, 4, LATENT, LATENT) and guided.dtype == torch.float32
    assert len(recorder.calls) == 1
    (sample, timestep, clip, tokens, time_ids, mask), out = recorder.calls[0]
    assert sample.shape == (3, 4, 8, LATENT, LATENT)
    for branch in range(3):
        assert torch.equal(sample[branch, :, :4], x)
    assert not sample[0, :, 4:].any()
    cond_latent = conditioning.conditioning_latent.expand(4, -1, -1, -1)
    assert torch.equal(sample[1, :, 4:], cond_latent) and torch.equal(sample[2, :, 4:], cond_latent)
    assert float(timestep) == pytest.approx(0.25 * math.log(sigma), rel=1e-6)
    real_clip = conditioning.clip_embeds.reshape(1, D)
    assert clip.shape == (3, 1, D) and not clip[0].any()
    assert torch.equal(clip[1], real_clip) and torch.equal(clip[2], real_clip)
    with torch.no_grad():
        uncond = projector(torch.zeros(1, 1, 10, 5, C))[0, 0]
        cond = projector(conditioning.features.token_windows(indices)[None])[0]
        exact = copy.deepcopy(projector).double()(conditioning.features.token_windows(indices)[None].double())[0]
    assert tokens.shape == (3, 4, T, D)
    for f in range(4):
        assert torch.allclose(tokens[0, f], uncond, atol=1e-6)
        assert torch.allclose(tokens[1, f], uncond, atol=1e-6)
    # the clip's 6 windows in one call vs these 4: float32 noise, measured
    torch.testing.assert_close(tokens[2], cond, rtol=0, atol=fp32_tolerance(cond, exact))
    bucket = conditioning.frame_buckets[indices].mean(dim=0) * 1.5
    assert time_ids.shape == (3, 3)
    for row in time_ids:
        assert row[0].item() == 12.5
        assert torch.allclose(row[1:], bucket, rtol=1e-6)
    assert torch.equal(mask, conditioning.face_mask)
    assert torch.allclose(guided, combine_guidance(out[0], out[1], out[2], 2.0, 7.5), rtol=1e-6, atol=1e-6)
    # the guidance really is 3-way: u, d and c all differ
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])


@pytest.fixture(scope="module")
def unet64(unet: nn.Module) -> nn.Module:
    return copy.deepcopy(unet).double()


@pytest.mark.parametrize("cfg_batch", [1, 2])
def test_cfg_batch_is_quality_neutral(
    unet64: nn.Module, projector: nn.Module, conditioning: ClipConditioning, cfg_batch: int
) -> None:
    """Splitting the three guidance branches over UNet calls is the same maths: checked in float64.

    In float32 the split is a different kernel (batch 1 or 2 instead of 3), and this tiny random UNet (8 x 8
    latent, 1 x 1 innermost block) amplifies rounding: the largest float32 error against float64 measured 4e-6 to
    1.3e-2 of the output scale over 24 inputs on 1 and 2 threads, and the split's error up to 11 times the
    batched one's, so no float32 bound is both tight and machine-independent.
    """
    x = torch.randn(3, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(6))
    indices = [3, 4, 5]
    full = make_denoise_window(unet64, projector, conditioning, device="cpu", dtype=torch.float64)
    recorder = RecordingUNet(unet64)
    split = make_denoise_window(recorder, projector, conditioning, device="cpu", dtype=torch.float64,
                                cfg_batch=cfg_batch)
    want, got = full(x, 6.354, indices), split(x, 6.354, indices)
    assert [args[0].shape[0] for args, _ in recorder.calls] == ([1, 1, 1] if cfg_batch == 1 else [1, 2])
    assert recorder.calls[0][1].dtype == torch.float64
    # The float64 branches differ by ~1e-16; the denoiser hands them back in float32 (one rounding step each)
    # and guidance weighs them by |1 - 2| + |2 - 7.5| + 7.5 = 14: at most 14 float32 steps of the output scale.
    scale = max(output_scale(out) for _, out in recorder.calls)
    torch.testing.assert_close(got, want, rtol=0, atol=16 * FLOAT32_EPS * scale)


def test_bad_cfg_batch(unet: nn.Module, projector: nn.Module, conditioning: ClipConditioning) -> None:
    with pytest.raises(ValueError, match="cfg_batch"):
        make_denoise_window(unet, projector, conditioning, device="cpu", dtype=torch.float32, cfg_batch=4)


def test_whole_clip_with_the_real_unet_is_deterministic(
    unet: nn.Module, projector: nn.Module, conditioning: ClipConditioning
) -> None:
    denoise = make_denoise_window(unet, projector, conditioning, device="cpu", dtype=torch.float32)
    runs = [
        sample_latents(conditioning.reference_latent, conditioning.num_frames, 2, denoise, seed=0, window=4)
        for _ in range(2)
    ]
    assert runs[0].shape == (6, 4, LATENT, LATENT) and torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1])


def test_half_precision_unet_gets_matching_dtypes(
    projector: nn.Module, conditioning: ClipConditioning
) -> None:
    torch.manual_seed(0)
    half = build_sonic_unet(TINY_UNET, dtype=torch.bfloat16)
    recorder = RecordingUNet(half)
    denoise = make_denoise_window(recorder, projector, conditioning, device="cpu", dtype=torch.bfloat16)
    guided = denoise(torch.randn(2, 4, LATENT, LATENT), 1.273, [0, 1])
    assert guided.dtype == torch.float32 and torch.isfinite(guided).all()
    (sample, _, clip, tokens, time_ids, mask), out = recorder.calls[0]
    assert {t.dtype for t in (sample, clip, tokens, time_ids, mask, out)} == {torch.bfloat16}
