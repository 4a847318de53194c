"""SonicUNet: official key table, attention maths, chunking, and agreement with diffusers' SVD UNet."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0
from numerics import algebra_atol

from sonic_guard.models.configs import SVD_XT_UNET_CONFIG, TINY_UNET_CONFIG
from sonic_guard.models.unet import build_sonic_unet, unet_init_kwargs
from sonic_guard.models.unet_attention import SonicAudioAttnProcessor, downsample_mask, feed_forward

REPO = Path(__file__).resolve().parents[1]
# The official key table lives in the shared material next to the repository (../shared), not in it.
KEYS_TSV = REPO.parent / "shared" / "spec" / "sonic_unet_keys.tsv"
D = TINY_UNET_CONFIG["cross_attention_dim"]


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return build_sonic_unet(TINY_UNET_CONFIG)


@pytest.fixture(scope="module")
def tiny_unet64(tiny_unet):
    """The same weights in float64, for the algebra checks (chunking, regrouping, the diffusers comparison)."""
    return copy.deepcopy(tiny_unet).double()


def _double(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.double() for t in tensors)


def _inputs(batch: int, frames: int, size: int, seed: int = 1, same_audio: bool = False):
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, frames, 8, size, size, generator=gen)
    clip = torch.randn(batch, 1, D, generator=gen)
    audio = torch.randn(batch, 1 if same_audio else frames, 32, D, generator=gen).expand(batch, frames, 32, D)
    ids = torch.tensor([[12.5, 16.0, 20.0]] * batch)
    return sample, clip, audio.contiguous(), ids


def _official_keys() -> dict[str, tuple[int, ...]]:
    if not KEYS_TSV.is_file():
        message = f"the official key table {KEYS_TSV} is missing: check out the shared material next to the repository"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI has the shared material: a missing table is a broken checkout, not a skip
        pytest.skip(message)
    table = {}
    for line in KEYS_TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")[:2]
        table[key] = tuple(int(s) for s in shape.split("x"))
    return table


def test_full_size_unet_on_meta_has_exactly_the_official_keys_and_shapes():
    expected = _official_keys()
    unet = build_sonic_unet(device="meta", dtype=torch.float16)
    got = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert len(expected) == 1492
    assert sorted(got) == sorted(expected)
    assert {k: s for k, s in got.items() if expected[k] != s} == {}
    audio_keys = [k for k in got if ".processor.to_" in k]
    assert len(audio_keys) == 64 and all(k.endswith(("to_k_ip.0.weight", "to_v_ip.0.weight")) for k in audio_keys)
    assert sum(v.numel() for v in unet.state_dict().values()) == 1_575_741_162


def test_full_size_forward_runs_on_meta_in_half_precision():
    unet = build_sonic_unet(SVD_XT_UNET_CONFIG, device="meta", dtype=torch.float16)
    unet.set_feed_forward_chunking(5)
    with torch.device("meta"):
        out = unet(torch.randn(2, 3, 8, 8, 12), torch.tensor(0.5), torch.randn(2, 1, 1024),
                   torch.randn(2, 3, 32, 1024), torch.randn(2, 3), torch.rand(1, 1, 64, 96))
    assert out.shape == (2, 3, 4, 8, 12) and out.dtype == torch.float16 and out.is_meta


def _attention(channels: int = 32, heads: int = 2) -> tuple[Attention, SonicAudioAttnProcessor]:
    """Both in float64: the tests that use them check algebra."""
    torch.manual_seed(3)
    attn = Attention(query_dim=channels, cross_attention_dim=D, heads=heads, dim_head=channels // heads).eval()
    processor = SonicAudioAttnProcessor(channels, D)
    return attn.double(), processor.double()


def test_regrouped_temporal_attention_equals_materialised_context():
    attn, processor = _attention()
    batch, positions, frames = 3, 6, 5
    hidden = torch.randn(batch * positions, frames, 32, dtype=torch.float64)
    clip, audio = torch.randn(batch, 1, D, dtype=torch.float64), torch.randn(batch, 32, D, dtype=torch.float64)
    with torch.no_grad():
        regrouped = processor(attn, hidden, clip, audio, 0.7)
        # Official: context repeated over h*w positions, batch-major rows (b * positions + p).
        naive = processor(attn, hidden, clip.repeat_interleave(positions, 0), audio.repeat_interleave(positions, 0),
                          0.7)
    assert regrouped.shape == hidden.shape
    torch.testing.assert_close(regrouped, naive, rtol=0, atol=algebra_atol(naive))
    # Position-major regrouping would be a different (wrong) pairing of rows and contexts.
    wrong = processor(attn, hidden, clip.repeat(positions, 1, 1), audio.repeat(positions, 1, 1), 0.7)
    assert not torch.allclose(regrouped, wrong, atol=1e-4)


@pytest.mark.parametrize("with_mask", [False, True])
def test_spatial_audio_attention_matches_diffusers_ip_adapter_processor(with_mask: bool):
    attn, processor = _attention()
    reference = IPAdapterAttnProcessor2_0(hidden_size=32, cross_attention_dim=D, num_tokens=(32,), scale=0.8).double()
    reference.to_k_ip[0].weight.data.copy_(processor.to_k_ip[0].weight)
    reference.to_v_ip[0].weight.data.copy_(processor.to_v_ip[0].weight)
    rows, height, width = 4, 4, 6
    hidden = torch.randn(rows, height * width, 32, dtype=torch.float64)
    clip, audio = torch.randn(rows, 1, D, dtype=torch.float64), torch.randn(rows, 32, D, dtype=torch.float64)
    mask = torch.zeros(1, 1, 32, 48, dtype=torch.float64)
    mask[..., 8:24, 10:30] = 1.0
    with torch.no_grad():
        weight = downsample_mask(mask, height * width) if with_mask else None
        ours = processor(attn, hidden, clip, audio, 0.8, weight)
        if with_mask:
            expected = reference(attn, hidden, (clip, [audio[:, None]]), ip_adapter_masks=[mask])
        else:
            expected = reference(attn, hidden, (clip, [audio]))
    torch.testing.assert_close(ours, expected, rtol=0, atol=algebra_atol(expected))


def test_feed_forward_chunks_equal_unchunked(tiny_unet64):
    ff = tiny_unet64.down_blocks[0].attentions[0].transformer_blocks[0].ff
    hidden = torch.randn(7, 13, 32, dtype=torch.float64)
    with torch.no_grad():
        whole = feed_forward(ff, hidden, None)
        for chunks in (2, 5, 91, 1000):
            torch.testing.assert_close(feed_forward(ff, hidden, chunks), whole, rtol=0, atol=algebra_atol(whole))


def test_whole_unet_chunked_equals_unchunked(tiny_unet64):
    sample, clip, audio, ids = _double(*_inputs(2, 3, 8))
    mask = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        tiny_unet64.set_feed_forward_chunking(None)
        plain = tiny_unet64(sample, 0.4, clip, audio, ids, mask)
        tiny_unet64.set_feed_forward_chunking(4)
        chunked = tiny_unet64(sample, 0.4, clip, audio, ids, mask)
        tiny_unet64.set_feed_forward_chunking(None)
    assert plain.shape == (2, 3, 4, 8, 8) and plain.dtype == torch.float64
    torch.testing.assert_close(chunked, plain, rtol=0, atol=algebra_atol(plain))


def test_without_audio_equals_diffusers_svd_unet(tiny_unet64):
    reference = UNetSpatioTemporalConditionModel(**unet_init_kwargs(TINY_UNET_CONFIG)).eval().double()
    missing, unexpected = reference.load_state_dict(tiny_unet64.state_dict(), strict=False)
    assert missing == [] and len(unexpected) == 64
    sample, clip, audio, ids = _double(*_inputs(2, 3, 16))
    tiny_unet64.ip_audio_scale = 0.0
    try:
        with torch.no_grad():
            ours = tiny_unet64(sample, torch.tensor(0.4), clip, audio, ids, None)
            theirs = reference(sample, torch.tensor(0.4), clip, ids).sample
    finally:
        tiny_unet64.ip_audio_scale = 1.0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=algebra_atol(theirs))


def test_audio_changes_output_and_temporal_layers_use_the_window_mean(tiny_unet64):
    sample, clip, audio, ids = _double(*_inputs(1, 4, 8))
    no_face = torch.zeros(1, 1, 64, 64, dtype=torch.float64)  # spatial audio off: only the window mean hears audio
    with torch.no_grad():
        base = tiny_unet64(sample, 0.1, clip, audio, ids, no_face)
        shuffled = tiny_unet64(sample, 0.1, clip, audio[:, [2, 0, 3, 1]], ids, no_face)
        changed = audio.clone()
        changed[:, 1:] = audio[:, :1]  # same first frame, different mean
        other_mean = tiny_unet64(sample, 0.1, clip, changed, ids, no_face)
        with_face = tiny_unet64(sample, 0.1, clip, audio, ids, torch.ones(1, 1, 64, 64, dtype=torch.float64))
    torch.testing.assert_close(shuffled, base, rtol=0, atol=algebra_atol(base))
    assert (other_mean - base).abs().max() > 1e-3
    assert (with_face - base).abs().max() > 1e-3


def test_bfloat16_forward_and_odd_latent_size():
    torch.manual_seed(0)
    unet = build_sonic_unet(TINY_UNET_CONFIG, dtype=torch.bfloat16)
    sample, clip, audio, ids = _inputs(1, 2, 12)
    with torch.no_grad():
        out = unet(sample, 0.2, clip, audio, ids, torch.ones(1, 1, 96, 96))
    assert out.shape == (1, 2, 4, 12, 12) and out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_chunking_rejects_nonsense(tiny_unet):
    with pytest.raises(ValueError):
        tiny_unet.set_feed_forward_chunking(0)


def test_temporal_audio_context_is_never_repeated_over_positions(tiny_unet):
    from torch.utils._python_dispatch import TorchDispatchMode

    class ShapeRecorder(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.shapes: set[tuple[int, ...]] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for item in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(item, torch.Tensor):
                    self.shapes.add(tuple(item.shape))
            return out

    batch, frames, size = 2, 3, 8
    sample, clip, audio, ids = _inputs(batch, frames, size)
    recorder = ShapeRecorder()
    with torch.no_grad(), recorder:
        tiny_unet(sample, 0.4, clip, audio, ids, None)
    rows_top = batch * size * size  # B*h*w at the first level
    # A materialised context would be (B*h*w, 32 tokens, D) or, split into heads, (B*h*w, heads, 32, head_dim).
    repeated = [s for s in recorder.shapes
                if s[:1] == (rows_top,) and ((len(s) == 3 and s[1] == 32) or (len(s) == 4 and s[2] == 32))]
    assert repeated == []
    assert (batch, 32, D) in recorder.shapes  # the window-mean audio context, once per batch row


def test_per_frame_clip_context_equals_per_batch_clip(tiny_unet):
    sample, clip, audio, ids = _inputs(2, 3, 8)
    with torch.no_grad():
        per_batch = tiny_unet(sample, 0.4, clip, audio, ids, None)
        per_frame = tiny_unet(sample, 0.4, clip.repeat_interleave(3, dim=0), audio, ids, None)
    torch.testing.assert_close(per_frame, per_batch)
    with pytest.raises(ValueError):
        tiny_unet(sample, 0.4, clip[:1].expand(5, 1, D), audio, ids, None)
