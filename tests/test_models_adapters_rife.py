"""Audio adapters and RIFE: official key tables, input layout, and interpolation behaviour."""

from __future__ import annotations

import torch

from sonic_guard.models.audio_adapters import AudioTokenProjector, MotionBucketPredictor, raw_to_bucket
from sonic_guard.models.rife import IFNet, backward_warp, strip_module_prefix


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_official_adapter_key_tables():
    with torch.device("meta"):
        token, bucket = AudioTokenProjector(), MotionBucketPredictor()
    assert _shapes(token) == {
        "proj1.weight": (1024, 19200), "proj1.bias": (1024,),
        "proj2.weight": (1024, 1024), "proj2.bias": (1024,),
        "proj3.weight": (32768, 1024), "proj3.bias": (32768,),
        "norm.weight": (1024,), "norm.bias": (1024,),
    }
    assert _shapes(bucket) == {
        "proj1.weight": (1024, 20224), "proj1.bias": (1024,),
        "proj2.weight": (1024, 1024), "proj2.bias": (1024,),
        "proj3.weight": (2, 1024), "proj3.bias": (2,),
    }
    assert sum(p.numel() for p in token.parameters()) == 54_300_672
    assert sum(p.numel() for p in bucket.parameters()) == 21_762_050


def test_token_projector_shape_and_time_layer_channel_flatten_order():
    torch.manual_seed(0)
    model = AudioTokenProjector(seq_len=3, blocks=2, channels=4, intermediate_dim=8, output_dim=6, context_tokens=5)
    out = model(torch.randn(2, 7, 3, 2, 4))
    assert out.shape == (2, 7, 5, 6)
    # The LayerNorm is per token: each token has ~zero mean over its channels.
    assert out.mean(-1).abs().max() < 1e-5
    # A single input at (t=2, layer=1, channel=3) must reach proj1 column ((2*2)+1)*4+3 = 23.
    x = torch.zeros(1, 1, 3, 2, 4)
    x[0, 0, 2, 1, 3] = 1.0
    with torch.no_grad():
        hidden = model.proj1(x.reshape(1, -1))
    torch.testing.assert_close(hidden[0], model.proj1.weight[:, 23] + model.proj1.bias)


def test_bucket_predictor_puts_audio_before_clip_and_maps_to_buckets():
    torch.manual_seed(0)
    model = MotionBucketPredictor(seq_len=5, blocks=1, channels=4, clip_channels=3, intermediate_dim=8)
    audio, clip = torch.randn(2, 6, 5, 1, 4), torch.randn(2, 1, 3)
    with torch.no_grad():
        out = model(audio, clip)
        assert out.shape == (2, 6, 2, 1)
        model.proj1.weight[:, 20:] = 0.0  # CLIP columns come after the 20 audio columns
        without_clip = model(audio, clip)
        torch.testing.assert_close(without_clip, model(audio, torch.zeros_like(clip)))
    torch.testing.assert_close(raw_to_bucket(torch.tensor([0.0, 1.0, -0.5])), torch.tensor([16.0, 32.0, 8.0]))


def test_rife_key_table_matches_flownet_layout():
    with torch.device("meta"):
        net = IFNet()
    shapes = _shapes(net)
    assert len(shapes) == 160
    for block in ("block0", "block1", "block2", "block_tea"):
        assert sum(1 for k in shapes if k.startswith(block + ".")) == 40
    assert shapes["block0.conv0.0.0.weight"] == (45, 11, 3, 3)
    assert shapes["block_tea.conv0.0.0.weight"] == (45, 14, 3, 3)
    assert shapes["block1.conv1.0.weight"] == (90, 45, 4, 4)
    assert shapes["block1.conv1.2.weight"] == (45, 4, 4, 4)
    assert shapes["block2.conv2.2.weight"] == (45, 1, 4, 4)
    assert shapes["block2.convblock3.1.1.weight"] == (90,)
    assert sum(p.numel() for p in net.parameters()) == 3_038_015


def test_strip_module_prefix_keeps_only_prefixed_keys():
    state = {"module.block0.conv1.0.bias": torch.zeros(1), "other.weight": torch.ones(1)}
    assert list(strip_module_prefix(state)) == ["block0.conv1.0.bias"]


def test_zero_flow_midpoint_is_the_average_for_any_size():
    net = IFNet().eval()
    with torch.no_grad():
        for block in (net.block0, net.block1, net.block2):
            for decoder in (block.conv1, block.conv2):
                decoder[2].weight.zero_()
                decoder[2].bias.zero_()
    img0, img1 = torch.rand(2, 3, 40, 52), torch.rand(2, 3, 40, 52)
    middle = net.midpoint(img0, img1)
    assert middle.shape == img0.shape and middle.dtype == torch.float32
    torch.testing.assert_close(middle, (img0 + img1) / 2)


def test_random_rife_output_is_clamped_and_warp_with_zero_flow_is_identity():
    torch.manual_seed(0)
    net = IFNet().eval()
    middle = net.midpoint(torch.rand(1, 3, 32, 64) * 1.5, torch.rand(1, 3, 32, 64) * 1.5)
    assert middle.min() >= 0.0 and middle.max() <= 1.0
    image = torch.rand(1, 3, 9, 11)
    torch.testing.assert_close(backward_warp(image, torch.zeros(1, 2, 9, 11)), image)
    shifted = backward_warp(image, torch.ones(1, 2, 9, 11))  # sample one pixel right and down
    torch.testing.assert_close(shifted[..., :-1, :-1], image[..., 1:, 1:], rtol=1e-4, atol=1e-5)
