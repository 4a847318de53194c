"""Remember what meta-device ops return, so a repeated op costs a tensor allocation instead of a meta kernel.

On the meta device most kernels are Python (torch's prims and refs): a simulated UNet window runs ~7,500 of them
and spends nearly all its time there. The same op on the same input shapes recurs constantly (the layers of a
block, the ladder's rungs re-running the UNet with one lever changed), and a functional op's output metadata
depends only on its inputs' metadata. `MetaOpMemo` is a `TorchDispatchMode` that records, per (op, input
metadata), the outputs' size/stride/dtype and on a repeat creates empty meta tensors with exactly those. The live
bytes a `LiveBytesTracker` sees are the same by construction: every memoised output is a fresh storage of the
recorded size, as the kernel's was.

Only ops that cannot alias or mutate qualify (no alias annotation on any return, no mutable argument), only on
meta tensors, and only if the recorded outputs were fresh, distinct, dense storages; anything else runs the op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

META = torch.device("meta")
_SCALARS = (bool, int, float, str, torch.dtype, torch.device, torch.memory_format, torch.layout)


class _NotMemoizable(Exception):
    """An argument the memo cannot key on (e.g. an object without value equality)."""


@dataclass(frozen=True)
class _OutputMeta:
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype


def _signature(value: Any) -> Any:
    """A hashable stand-in for one op argument: tensors by metadata, scalars by type and value."""
    if isinstance(value, torch.Tensor):
        if value.device.type != "meta" or value.is_sparse or value.is_quantized:
            raise _NotMemoizable
        return (torch.Tensor, tuple(value.shape), value.stride(), value.dtype, value.storage_offset(),
                value.requires_grad)
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_signature(item) for item in value))
    if isinstance(value, dict):
        return (dict, tuple(sorted((key, _signature(item)) for key, item in value.items())))
    if value is None or isinstance(value, _SCALARS):
        return (type(value), value)  # the type too: 1 and 1.0 promote differently
    raise _NotMemoizable


def _functional(func: Any) -> bool:
    schema = func._schema
    return not schema.is_mutable and all(ret.alias_info is None for ret in schema.returns)


def _fresh_outputs(out: Any, args: tuple, kwargs: dict) -> tuple[_OutputMeta, ...] | None:
    """The outputs' metadata if each is a new dense meta storage not shared with an input or another output."""
    tensors = list(out) if isinstance(out, (list, tuple)) else [out]
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        return None
    inputs = {t.untyped_storage()._cdata for t in _flat_tensors((args, kwargs))}
    seen: set[int] = set()
    metas = []
    for tensor in tensors:
        if tensor.device.type != "meta" or tensor.storage_offset() != 0:
            return None
        storage = tensor.untyped_storage()
        dense = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device=META)
        if (storage._cdata in inputs or storage._cdata in seen
                or storage.nbytes() != dense.untyped_storage().nbytes()):
            return None
        seen.add(storage._cdata)
        metas.append(_OutputMeta(tuple(tensor.shape), tensor.stride(), tensor.dtype))
    return tuple(metas)


def _flat_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _flat_tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _flat_tensors(item)]
    return []


@dataclass
class MetaOpMemo:
    """The remembered op outputs; one per estimator, shared by all its simulations (never global)."""

    outputs: dict[Any, tuple[tuple[_OutputMeta, ...], type] | None] = field(default_factory=dict)
    functional: dict[Any, bool] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def mode(self) -> MetaOpMemoMode:
        """A dispatch mode reading and filling this memo; enter it outside the simulation's tracker."""
        return MetaOpMemoMode(self)


class MetaOpMemoMode(TorchDispatchMode):
    def __init__(self, memo: MetaOpMemo) -> None:
        super().__init__()
        self.memo = memo

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        memo = self.memo
        functional = memo.functional.get(func)
        if functional is None:
            functional = memo.functional[func] = _functional(func)
        try:
            key = (func, _signature(args), _signature(kwargs)) if functional else None
        except _NotMemoizable:
            key = None
        if key is None:
            return func(*args, **kwargs)
        recorded = memo.outputs.get(key, False)
        if recorded is None:  # seen before and not memoizable
            return func(*args, **kwargs)
        if recorded is not False:
            memo.hits += 1
            metas, container = recorded
            made = [torch.empty_strided(m.size, m.stride, dtype=m.dtype, device=META) for m in metas]
            return made[0] if container is torch.Tensor else container(made)
        memo.misses += 1
        out = func(*args, **kwargs)
        metas = _fresh_outputs(out, args, kwargs)
        memo.outputs[key] = None if metas is None else (metas, type(out) if isinstance(out, (list, tuple))
                                                        else torch.Tensor)
        return out
