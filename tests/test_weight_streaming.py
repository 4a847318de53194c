"""UNet weight offload gives the same result and leaves no hooks behind."""

from __future__ import annotations

import torch

from sonic_guard.models.unet import build_sonic_unet
from sonic_guard.models.weight_streaming import stream_weights, streamed_blocks

TINY = {
    "block_out_channels": [32, 32, 32, 32], "num_attention_heads": [2, 2, 2, 2], "cross_attention_dim": 32,
    "layers_per_block": 1,
}


def test_streamed_forward_equals_resident_forward_and_cleans_up() -> None:
    torch.manual_seed(0)
    unet = build_sonic_unet(TINY, device="cpu", dtype=torch.float32).eval()
    sample = torch.randn(1, 4, 8, 8, 8)
    clip = torch.randn(1, 1, 32)
    audio = torch.randn(1, 4, 32, 32)
    ids = torch.tensor([[12.5, 16.0, 16.0]])
    with torch.no_grad():
        resident = unet(sample, 1.0, clip, audio, ids, None)
        with stream_weights(unet, torch.device("cpu")):
            inner = unet.block_residency
            moved: list[str] = []

            def counting(block):
                moved.append(type(block).__name__)
                return inner(block)

            unet.block_residency = counting
            streamed = unet(sample, 1.0, clip, audio, ids, None)
    assert torch.equal(resident, streamed)
    assert len(moved) == len(streamed_blocks(unet))  # every block was brought in for its turn
    assert unet.block_residency is None
    assert all(p.device.type == "cpu" for p in unet.parameters())
