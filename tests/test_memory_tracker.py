"""The live-bytes simulation on the meta device against the real CPU allocator (torch.profiler)."""

from __future__ import annotations

import pytest
import torch

from sonic_guard.memory.attention_model import AttentionModel
from sonic_guard.memory.tracker import LiveBytesTracker, module_weight_bytes
from sonic_guard.memory.validation import validate_unet_on_cpu

MAX_REL_ERROR = 0.02


# 256 px, 2 x 4 frames: activations of 23 MiB (flash) / 152 MiB (math) dwarf allocator noise; at the very
# smallest sizes fixed mkldnn workspaces would dominate instead.
@pytest.mark.parametrize("attention", ["flash", "math"])
def test_simulated_peak_matches_cpu_allocator(attention: str) -> None:
    result = validate_unet_on_cpu(attention, batch=2, frames=4, size=256)
    print(f"{attention}: simulated {result.simulated_bytes / 2**20:.2f} MiB, measured "
          f"{result.measured_bytes / 2**20:.2f} MiB, relative error {result.relative_error:.4%}")
    assert result.measured_bytes > 10 * 2**20
    assert result.relative_error <= MAX_REL_ERROR


@pytest.mark.parametrize("backend", ["flash", "mem_efficient", "math"])
def test_attention_backends_are_modelled_by_their_allocations(backend: str) -> None:
    query = torch.empty(2, 4, 1024, 64, device="meta", dtype=torch.float16)
    with torch.no_grad(), AttentionModel(backend), LiveBytesTracker(block=1) as tracker:
        out = torch.nn.functional.scaled_dot_product_attention(query, query, query)
    output_bytes = 2 * 4 * 1024 * 64 * 2
    assert out.shape == query.shape
    if backend == "math":
        scores = 2 * 4 * 1024 * 1024 * 2
        assert tracker.peak_bytes >= 2 * scores  # scores + softmax are both alive at once
    else:
        assert tracker.peak_bytes == output_bytes + 2 * 4 * 1024 * 4  # output + float32 log-sum-exp


def test_views_and_inplace_ops_are_not_allocations() -> None:
    with LiveBytesTracker(block=512) as tracker:
        x = torch.empty(1000, device="meta")  # 4000 B -> 4096 B
        x.view(10, 100).add_(1).t()
        assert tracker.live_bytes == 4096
        y = x * 2
        assert tracker.live_bytes == 8192
        del y
        assert tracker.live_bytes == 4096
    assert tracker.peak_bytes == 8192


def test_weights_counted_per_tensor_rounded_to_blocks() -> None:
    layer = torch.nn.Linear(3, 5).to("meta")  # weight 60 B, bias 20 B
    assert module_weight_bytes(layer, block=512) == 1024
    assert module_weight_bytes(layer, block=1) == 80
