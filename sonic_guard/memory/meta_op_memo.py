"""Remember what meta-device ops return, so a repeated op costs a tensor allocation instead of a meta kernel.

On the meta device most kernels are Python (torch's prims and refs): a simulated UNet window runs ~7,500 of them
and spends nearly all its time there. The same op on the same input shapes recurs constantly (the layers of a
block, the ladder's rungs re-running the UNet with one lever changed), and a functional op's output metadata
depends only on its inputs' metadata. `MetaOpMemo` records, per (op, input metadata), the outputs'
size/stride/dtype, and `MemoTracker` (its dispatch mode) creates empty meta tensors with exactly those on a
repeat. The live bytes counted are the same by construction: every memoised output is a fresh storage of the
recorded size, as the kernel's was.

Only ops that cannot alias or mutate qualify (no alias annotation on any return, no mutable argument), only on
meta tensors, and only if the recorded outputs were fresh, distinct, dense storages; anything else runs the op.

The memo and the byte counting are one dispatch mode (`MemoTracker` is a `LiveBytesTracker`): a second mode under
the tracker would cost another Python dispatch layer per op, which is most of a cached op's remaining time. Ops
whose returns all alias an input (views, in-place ops) run directly: the tracker would count nothing for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .tracker import LiveBytesTracker

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
        if not value.is_meta or value.is_sparse or value.is_quantized:
            raise _NotMemoizable
        return (torch.Tensor, value.shape, value.stride(), value.dtype, value.storage_offset(), value.requires_grad)
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


def _returns_alias(func: Any) -> bool:
    """Every return is annotated as an input's alias (a view or an in-place result): its storage is an input's."""
    returns = func._schema.returns
    return bool(returns) and all(ret.alias_info is not None for ret in returns)


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
    aliasing: dict[Any, bool] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    # Wall seconds spent inside each stage's tracker, summed over its simulations: where a cold plan goes.
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def tracker(self, block: int, stage: str = "other") -> MemoTracker:
        """A live-bytes tracker (allocator `block`) that reads and fills this memo; its time counts to `stage`."""
        return MemoTracker(self, block, stage)

    def returns_alias(self, func: Any) -> bool:
        aliasing = self.aliasing.get(func)
        if aliasing is None:
            aliasing = self.aliasing[func] = _returns_alias(func)
        return aliasing

    def key(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """The memo key of one call, or None when the op or an argument cannot be memoised."""
        functional = self.functional.get(func)
        if functional is None:
            functional = self.functional[func] = _functional(func)
        if not functional:
            return None
        try:
            return (func, _signature(args), _signature(kwargs))
        except _NotMemoizable:
            return None


class MemoTracker(LiveBytesTracker):
    """Counts live bytes exactly as `LiveBytesTracker` does; a repeated op's outputs come from the memo.

    A memoised output is a new storage of the recorded size, as the kernel's was, so it is counted the same.
    """

    def __init__(self, memo: MetaOpMemo, block: int, stage: str = "other") -> None:
        super().__init__(block)
        self.memo = memo
        self.stage = stage
        self._entered = 0.0

    def __enter__(self) -> MemoTracker:
        self._entered = time.perf_counter()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        seconds = self.memo.stage_seconds
        seconds[self.stage] = seconds.get(self.stage, 0.0) + time.perf_counter() - self._entered

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        memo = self.memo
        if memo.returns_alias(func):
            # Half of a UNet's ops (view, transpose, add_, ...): the tracker would find the output's storage among
            # the inputs' and count nothing, so skip the bookkeeping.
            return func(*args, **kwargs)
        key = memo.key(func, args, kwargs)
        recorded = memo.outputs.get(key, False) if key is not None else None
        if recorded:
            memo.hits += 1
            metas, container = recorded
            made = [torch.empty_strided(m.size, m.stride, dtype=m.dtype, device=META) for m in metas]
            for tensor in made:
                self._track(tensor, _NO_INPUTS)  # fresh storages: never an input's
            return made[0] if container is torch.Tensor else container(made)
        # aten arguments hold tensors only in lists/tuples (and the kwargs dict): the same leaves as torch's
        # tree_flatten, at a fraction of its cost (it runs for every op that is not a memo hit).
        input_keys = {t.untyped_storage()._cdata for t in _flat_tensors((args, kwargs))}
        out = func(*args, **kwargs)
        if recorded is False:  # a first sight of a memoisable call: remember it (or that it cannot be)
            memo.misses += 1
            metas = _fresh_outputs(out, args, kwargs)
            memo.outputs[key] = None if metas is None else (metas, type(out) if isinstance(out, (list, tuple))
                                                            else torch.Tensor)
        for tensor in _flat_tensors(out):
            self._track(tensor, input_keys)
        return out


_NO_INPUTS: frozenset[int] = frozenset()
