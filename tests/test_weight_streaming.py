"""UNet weight offload gives the same result and leaves no hooks behind."""

from __future__ import annotations

import torch

from sonic_guard.models.unet import build_sonic_unet
from sonic_guard.models.weight_streaming import BlockStreamer, stream_weights, streamed_blocks

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


def test_blocks_are_fetched_one_ahead_at_most_two_resident_and_never_copied_back() -> None:
    """On a device other than the host (the meta device here: no values, real placement), the streamer brings each
    block in for its turn, fetches the next one ahead (wrapping to the first for the next call), holds at most two
    blocks on the device, and leaves the host tensors as they were: the same storage, nothing copied back."""
    unet = build_sonic_unet(TINY, device="cpu", dtype=torch.float32).eval()
    blocks = streamed_blocks(unet)
    host_pointers = [p.data_ptr() for block in blocks for p in block.parameters()]
    streamer = BlockStreamer(blocks, torch.device("meta"))
    seen: list[tuple[int, int, str]] = []
    for call in range(2):  # two UNet calls: the second starts with the block fetched at the end of the first
        for index, block in enumerate(blocks):
            with streamer.resident(block):
                on_device = sum(any(p.is_meta for p in other.parameters()) for other in blocks)
                seen.append((index, streamer.resident_count(), next(block.parameters()).device.type))
                assert on_device == 1  # only the running block is installed; the fetched one waits aside
            assert not any(p.is_meta for p in block.parameters())
        assert streamer.fetch_log[: (call + 1) * len(blocks) + 1] == [*range(len(blocks))] * (call + 1) + [0]
    streamer.close()
    assert [device for _, _, device in seen] == ["meta"] * 2 * len(blocks)
    assert max(count for _, count, _ in seen) == 2 and streamer.resident_count() == 0
    assert [p.data_ptr() for block in blocks for p in block.parameters()] == host_pointers
    assert all(p.device.type == "cpu" for p in unet.parameters())

