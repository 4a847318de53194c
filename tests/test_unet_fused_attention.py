"""Every attention of our UNet (spatial, temporal, audio cross-attention) goes through a fused SDPA kernel: the
memory model plans O(tokens) attention, and a hand-written softmax attention would break that plan and the speed."""

from __future__ import annotations

from collections import Counter

import torch
from test_weight_streaming import TINY
from torch.profiler import ProfilerActivity, profile

from sonic_guard.models.unet import build_sonic_unet


def test_every_attention_call_runs_a_fused_sdpa_kernel_and_none_runs_softmax() -> None:
    torch.manual_seed(0)
    unet = build_sonic_unet(TINY, device="cpu", dtype=torch.float32).eval()
    attention_modules = [m for m in unet.modules() if type(m).__name__ == "Attention"]
    inputs = (torch.randn(3, 4, 8, 8, 8), 1.0, torch.randn(3, 1, 32), torch.randn(3, 4, 32, 32),
              torch.tensor([[12.5, 16.0, 16.0]] * 3), None)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        unet(*inputs)
    counts = Counter(event.name for event in prof.events())
    sdpa = counts["aten::scaled_dot_product_attention"]
    assert sdpa >= len(attention_modules) > 0  # each Attention module ran SDPA at least once
    assert counts["aten::_scaled_dot_product_flash_attention_for_cpu"] == sdpa  # the fused CPU kernel, every time
    assert counts["aten::_scaled_dot_product_attention_math"] == 0
    assert counts["aten::softmax"] == counts["aten::_softmax"] == 0
