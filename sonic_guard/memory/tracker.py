"""Count live tensor bytes while a module runs on the meta device (or for real, on the CPU).

`LiveBytesTracker` is a `TorchDispatchMode`: every storage an op creates is added (rounded up to the allocator's
block size, 512 B for the CUDA caching allocator) and subtracted again when the storage is freed, through a
`weakref.finalize` on it. The maximum is the activation peak. Storages that already existed when tracking began
(parameters, buffers, inputs) are never counted: an op output that shares storage with an op input is a view or an
in-place result, not an allocation.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch.nn import Module
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .fitted_corrections import CUDA_BLOCK_BYTES


def round_up(nbytes: int, block: int) -> int:
    """Round `nbytes` up to a multiple of `block` (the allocator's granularity)."""
    if block <= 1:
        return nbytes
    return -(-nbytes // block) * block


def tensor_bytes(tensors: Iterable[torch.Tensor], block: int = CUDA_BLOCK_BYTES) -> int:
    """Bytes of the distinct storages behind `tensors`, each rounded to the allocator block."""
    seen: set[int] = set()
    total = 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in seen:
            continue
        seen.add(key)
        total += round_up(storage.nbytes(), block)
    return total


def module_weight_bytes(module: Module, block: int = CUDA_BLOCK_BYTES) -> int:
    """Resident bytes of a module's parameters and buffers (each its own allocation on the device)."""
    return tensor_bytes(list(module.parameters()) + list(module.buffers()), block)


class LiveBytesTracker(TorchDispatchMode):
    """Track live bytes of storages created by ops; `peak_bytes` is the maximum seen since entering."""

    def __init__(self, block: int = CUDA_BLOCK_BYTES) -> None:
        super().__init__()
        self.block = block
        self.live_bytes = 0
        self.peak_bytes = 0
        self._sizes: dict[int, int] = {}

    def reset_peak(self) -> None:
        """Start a new peak measurement from the bytes live now."""
        self.peak_bytes = self.live_bytes

    def _release(self, key: int) -> None:
        self.live_bytes -= self._sizes.pop(key, 0)

    def _track(self, tensor: torch.Tensor, input_keys: set[int]) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        # A view or an in-place op hands back an input's storage: nothing new was allocated.
        if key in input_keys or key in self._sizes:
            return
        nbytes = round_up(storage.nbytes(), self.block)
        self._sizes[key] = nbytes
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(storage, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        flat_inputs, _ = tree_flatten((args, kwargs))
        input_keys = {t.untyped_storage()._cdata for t in flat_inputs if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        flat_out, _ = tree_flatten(out)
        for tensor in flat_out:
            if isinstance(tensor, torch.Tensor):
                self._track(tensor, input_keys)
        return out
