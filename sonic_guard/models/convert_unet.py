"""Convert Sonic/unet.pth (the official fp32 torch pickle, 6.3 GB) once, on request, to Sonic/unet.fp16.safetensors.

Half the size on disk and in memory, memory-mapped when loaded (no pickle, no second copy in RAM), and what a GPU
run uses anyway (fp16). The file is written under a `.partial` name, read back and compared key for key with the
source, and only then renamed into place, so an interrupted or failed conversion never leaves a file the loader
would take. Usage: `python -m sonic_guard.models.convert_unet <model folder> [--force]`.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import Tensor

from ..errors import CheckpointError, SonicGuardError
from .checkpoint_paths import UNET_FP16, UNET_PTH, ModelPaths, WhisperSearch, download_hint
from .state_dicts import check_state_dict, expected_shapes, read_state_dict
from .unet import build_sonic_unet

logger = logging.getLogger(__name__)

HEADER_ROOM_BYTES = 1 << 20  # the safetensors JSON header (~100 bytes a tensor) and file-system slack
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class ConversionResult:
    source: Path
    target: Path
    tensors: int
    bytes_written: int
    seconds: float
    skipped: bool  # the converted file was already there (and --force was not given)


def sonic_folder(model_folder: Path) -> Path:
    """The `Sonic/` folder of a model folder (the folder itself when it is `Sonic/`)."""
    model_folder = Path(model_folder).expanduser()
    if (model_folder / "Sonic" / UNET_PTH).is_file() or not (model_folder / UNET_PTH).is_file():
        return model_folder / "Sonic"
    return model_folder


def fp16_bytes(state: dict[str, Tensor]) -> int:
    """Bytes of the converted tensors (floating tensors become 2 bytes an element; others keep their size)."""
    return sum(t.numel() * (2 if t.is_floating_point() else t.element_size()) for t in state.values())


def _to_fp16(name: str, tensor: Tensor, source: Path) -> Tensor:
    if not tensor.is_floating_point():
        return tensor.contiguous()
    half = tensor.to(torch.float16).contiguous()
    overflow = torch.isfinite(tensor) & ~torch.isfinite(half)
    if bool(overflow.any()):
        raise CheckpointError(
            problem=f"{source}: tensor {name} holds values beyond fp16's range (largest magnitude "
            f"{float(tensor.abs().max()):.3g}, fp16 stops at 65504); nothing was written",
            expected="weights that fit in fp16, as the official Sonic UNet's do",
            fix=f"keep using {UNET_PTH} (the loader reads it when there is no conversion), or get the official "
            f"file: {download_hint('unet')}",
        )
    return half


def _check_room(folder: Path, needed: int, free_bytes: int | None) -> None:
    free = shutil.disk_usage(folder).free if free_bytes is None else free_bytes
    if free < needed:
        raise CheckpointError(
            problem=f"not enough free space to convert the UNet in {folder}: {free / 2**30:.2f} GiB free, "
            f"{needed / 2**30:.2f} GiB needed for {UNET_FP16}; nothing was written",
            expected=f"at least {needed / 2**30:.2f} GiB free on the disk holding {folder}",
            fix=f"free {max(needed - free, 1) / 2**30:.2f} GiB or more there and run the conversion again "
            f"(the loader keeps reading {UNET_PTH} meanwhile)",
        )


def _verify(path: Path, expected: dict[str, Tensor], source: Path) -> None:
    """Read the written file back: the same keys, shapes, dtypes and values as the converted source."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as written:
        keys = set(written.keys())
        if keys != set(expected):
            raise CheckpointError(
                problem=f"the converted file {path} has {len(keys)} tensors but {source} has {len(expected)}",
                expected="the same tensor names in both", fix="run the conversion again",
            )
        for name, tensor in expected.items():
            back = written.get_tensor(name)
            if back.dtype != tensor.dtype or back.shape != tensor.shape or not torch.equal(back, tensor):
                raise CheckpointError(
                    problem=f"the converted file {path} differs from {source} at tensor {name}",
                    expected="every tensor equal to the source's, in fp16", fix="run the conversion again",
                )


def _write_checked(partial: Path, state: dict[str, Tensor], source: Path) -> int:
    from safetensors.torch import save_file

    save_file(state, str(partial), metadata={"format": "pt", "converted_from": source.name,
                                             "source_bytes": str(source.stat().st_size)})
    os.chmod(partial, source.stat().st_mode & 0o777)  # readable by whoever can read unet.pth
    with open(partial, "rb") as handle:  # on disk before the rename makes it the file the loader takes
        os.fsync(handle.fileno())
    _verify(partial, state, source)
    return partial.stat().st_size


def _is_disk_full(error: BaseException) -> bool:
    """ENOSPC/EDQUOT, also when safetensors' writer reports it as text ("... (os error 28)")."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return any(f"(os error {code})" in str(error) for code in (errno.ENOSPC, errno.EDQUOT))


def convert_unet(model_folder: Path | str, *, force: bool = False, free_bytes: int | None = None) -> ConversionResult:
    """Write `Sonic/unet.fp16.safetensors` from `Sonic/unet.pth`, atomically and checked against the source.

    `free_bytes` replaces the disk's free-space figure (tests); the conversion is refused before anything is
    written when the file would not fit. The source is checked against the Sonic UNet's names and shapes first.
    """
    sonic = sonic_folder(Path(model_folder))
    source, target = sonic / UNET_PTH, sonic / UNET_FP16
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    partial.unlink(missing_ok=True)  # left by a conversion that was killed
    if target.is_file() and not force:
        logger.info("%s is already there; pass --force to convert again", target)
        return ConversionResult(source, target, 0, target.stat().st_size, 0.0, skipped=True)
    started = time.perf_counter()
    hint = download_hint("unet")
    state = read_state_dict(source, "Sonic UNet (unet.pth)", sonic, hint)
    from .checkpoints import read_unet_config  # the UNet config of this model folder (or the built-in SVD-xt's)

    paths = ModelPaths.from_root(sonic.parent, whisper=WhisperSearch(None, ()))
    check_state_dict(state, expected_shapes(build_sonic_unet(read_unet_config(paths), device="meta")), source,
                     "Sonic UNet (unet.pth)", sonic, hint)
    _check_room(sonic, fp16_bytes(state) + HEADER_ROOM_BYTES, free_bytes)
    converted = {name: _to_fp16(name, tensor, source) for name, tensor in state.items()}
    try:
        written = _write_checked(partial, converted, source)
        os.replace(partial, target)
    except (OSError, SafetensorError) as error:
        partial.unlink(missing_ok=True)
        if _is_disk_full(error):
            raise CheckpointError(
                problem=f"the disk holding {sonic} filled up while {UNET_FP16} was written; the partial file was "
                "removed", expected=f"room for {fp16_bytes(state) / 2**30:.2f} GiB there",
                fix=f"free space there and run the conversion again (the loader keeps reading {UNET_PTH})",
            ) from error
        raise
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - started
    logger.info("wrote %s (%d tensors, %.2f GiB) in %.1f s", target, len(converted), written / 2**30, seconds)
    return ConversionResult(source, target, len(converted), written, seconds, skipped=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sonic_guard.models.convert_unet", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("model_folder", type=Path, help="the folder holding Sonic/unet.pth (or Sonic/ itself)")
    parser.add_argument("--force", action="store_true", help=f"convert again when {UNET_FP16} exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = convert_unet(args.model_folder, force=args.force)
    except SonicGuardError as error:
        sys.stderr.write(f"{error}\n")
        return 1
    if result.skipped:
        sys.stdout.write(f"{result.target} already exists (use --force to convert again)\n")
    else:
        sys.stdout.write(f"wrote {result.target}: {result.tensors} tensors, {result.bytes_written / 2**20:.1f} "
                         f"MiB, {result.seconds:.1f} s; the Sonic Model Loader now reads it instead of {UNET_PTH}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
