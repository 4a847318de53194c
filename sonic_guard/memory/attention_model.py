"""Simulate scaled-dot-product attention the way the target device will run it.

On the meta device SDPA decomposes into the math path and materialises the (L x S) score matrix. A GPU with flash
or memory-efficient attention never does: those kernels allocate the output and a per-row log-sum-exp only.
`AttentionModel` is a `TorchFunctionMode` that replaces `F.scaled_dot_product_attention` with allocations of that
size ("flash"/"mem_efficient"), or with an explicit math path whose allocations match ATen's
`_scaled_dot_product_attention_math` + `_safe_softmax` (scores, softmax output and the boolean -inf mask).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .plan import ATTENTION_BACKENDS, O_TOKENS_BACKENDS


def _fused_attention(query: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Output-sized result plus the float32 log-sum-exp (batch, heads, L) that fused kernels also return."""
    out = query.new_empty(query.shape[:-1] + (value.shape[-1],))
    logsumexp = query.new_empty(query.shape[:-1], dtype=torch.float32)
    del logsumexp  # freed when the kernel returns; only its transient presence matters
    return out


def _math_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None) -> torch.Tensor:
    # Same allocation sequence as ATen's math path: q and k^T are scaled by sqrt(scale) each.
    factor = math.sqrt(scale if scale is not None else 1.0 / math.sqrt(query.shape[-1]))
    scores = torch.matmul(query * factor, key.transpose(-2, -1) * factor)
    probs = torch.softmax(scores, dim=-1)
    fully_masked = scores.eq(float("-inf"))  # _safe_softmax's mask, alive next to both score matrices
    rows = fully_masked.all(dim=-1, keepdim=True)
    del fully_masked, scores
    probs.masked_fill_(rows, 0.0)
    return torch.matmul(probs, value)


def device_attention_backends(device_type: str, capability: tuple[int, int] | None = None) -> tuple[str, ...]:
    """SDPA backends a device runs, best first (the planner's attention lever picks among these).

    CUDA: flash needs compute capability >= 8.0 (Ampere), memory-efficient >= 5.0. CPU: torch's fused CPU kernel
    is flash-like (O(tokens); checked against the CPU allocator in the tests). MPS: treated as math, which
    materialises the scores, because no fused kernel is guaranteed there.
    """
    if device_type == "cuda":
        major = (capability or (0, 0))[0]
        if major >= 8:
            return ("flash", "mem_efficient", "math")
        return ("mem_efficient", "math") if major >= 5 else ("math",)
    if device_type == "cpu":
        return ("flash", "math")
    return ("math",)


class AttentionModel(TorchFunctionMode):
    """Within this mode, SDPA allocates what `backend` would allocate on the device."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
        self.backend = backend

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        query, key, value = args[:3]
        if self.backend in O_TOKENS_BACKENDS:
            return _fused_attention(query, value)
        if kwargs.get("attn_mask") is not None or kwargs.get("is_causal") or len(args) > 3:
            # Masked/causal math attention: let torch's own decomposition materialise it.
            return func(*args, **kwargs)
        return _math_attention(query, key, value, kwargs.get("scale"))
