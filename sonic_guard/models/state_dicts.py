"""Reading a checkpoint file into a state dict and checking it strictly against the module that will hold it."""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import Tensor

from ..errors import CheckpointError

logger = logging.getLogger(__name__)

_SHOWN = 5  # how many differing keys a message lists

# What torch.load, safetensors and from_pretrained raise on missing, truncated or corrupt files.
LOAD_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile,
    KeyError, AttributeError, TypeError, SafetensorError,
)


def _shape(shape: torch.Size | tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def read_state_dict(path: Path, what: str, searched: Path, hint: str) -> dict[str, Tensor]:
    """Load `path` (torch pickle or .safetensors) on the CPU as a flat {name: tensor} dict, or raise CheckpointError."""
    if not path.is_file():
        raise CheckpointError(
            problem=f"The {what} file {path} was not found (searched in {searched})",
            expected=f"a file at {path}",
            fix=f"download it: {hint}",
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: object = load_file(str(path), device="cpu")
        else:
            # mmap avoids a second full copy in RAM for the 6 GB UNet; only zip-format files support it.
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except LOAD_ERRORS as exc:
        raise CheckpointError(
            problem=f"The {what} file {path} (in {searched}) could not be read: it is truncated or corrupt "
            f"({type(exc).__name__}: {str(exc)[:200]})",
            expected="a complete PyTorch state dict (.pth/.pkl) or .safetensors file",
            fix=f"delete it and download it again: {hint}",
        ) from exc
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()
    ):
        raise CheckpointError(
            problem=f"The {what} file {path} (in {searched}) holds a {type(loaded).__name__}, not a state dict "
            "of named tensors",
            expected="a flat mapping of parameter names to tensors",
            fix=f"use the official file: {hint}",
        )
    return dict(loaded)


def check_state_dict(
    state_dict: Mapping[str, Tensor],
    expected: Mapping[str, torch.Size],
    path: Path,
    what: str,
    searched: Path,
    hint: str,
) -> None:
    """Raise CheckpointError naming the first few missing, unexpected and wrongly shaped keys."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        shown = ", ".join(f"{k} {_shape(expected[k])}" for k in missing[:_SHOWN])
        parts.append(f"{len(missing)} missing key(s): {shown}")
    if unexpected:
        shown = ", ".join(f"{k} {_shape(state_dict[k].shape)}" for k in unexpected[:_SHOWN])
        parts.append(f"{len(unexpected)} unexpected key(s): {shown}")
    if wrong:
        shown = ", ".join(
            f"{k} is {_shape(state_dict[k].shape)} but should be {_shape(expected[k])}" for k in wrong[:_SHOWN]
        )
        parts.append(f"{len(wrong)} wrongly shaped tensor(s): {shown}")
    raise CheckpointError(
        problem=f"The {what} file {path} (in {searched}) does not match the model: " + "; ".join(parts),
        expected=f"exactly {len(expected)} tensors with the official names and shapes",
        fix=f"make sure this is the right file (not another model or a different version); get it from: {hint}",
    )


def expected_shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in module.state_dict().items()}


def load_checked(
    module: torch.nn.Module,
    state_dict: Mapping[str, Tensor],
    path: Path,
    what: str,
    searched: Path,
    hint: str,
) -> torch.nn.Module:
    """Strict shape check, then load; a module built on "meta" receives the checkpoint's tensors directly."""
    check_state_dict(state_dict, expected_shapes(module), path, what, searched, hint)
    on_meta = any(p.is_meta for p in module.parameters())
    module.load_state_dict(state_dict, strict=True, assign=on_meta)
    leftovers = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if leftovers:
        raise CheckpointError(
            problem=f"The {what} file {path} left {len(leftovers)} tensor(s) unset, e.g. {leftovers[:3]}",
            expected="every parameter and buffer in the file",
            fix=f"use the official file: {hint}",
        )
    return module.eval()
