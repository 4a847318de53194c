"""The `devices` setting: a comma-separated list of torch devices, one rank per entry.

"cpu:N" names a CPU rank (all compute on the CPU); its index only picks its SONIC_GUARD_FREE_MEMORY_BYTES entry.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from ...errors import BadInputError

_DEVICE = re.compile(r"^(cpu(:\d+)?|cuda:\d+)$")
EXAMPLES = ('"cuda:0,cuda:1" (NCCL) or "cpu,cpu" / "cpu:0,cpu:1" (gloo, for testing); empty = one device, as '
            'without this setting')


def parse_devices(text: str) -> tuple[str, ...]:
    """The devices of `text` ("" -> ()), checked for syntax only; raises BadInputError on a bad list."""
    entries = tuple(part.strip() for part in text.split(",")) if text.strip() else ()
    for entry in entries:
        if not _DEVICE.match(entry):
            raise BadInputError(
                problem=f"devices entry {entry!r} (in {text!r}) is not a device name",
                expected=f"'cpu', 'cpu:N' or 'cuda:N' entries separated by commas, e.g. {EXAMPLES}",
                fix="correct the devices setting, or leave it empty to run on one device",
            )
    if len(entries) == 1:
        raise BadInputError(
            problem=f"devices lists one device ({entries[0]})",
            expected="two or more devices to split the windows over",
            fix="list at least two devices, or leave devices empty to run on the generator's device",
        )
    kinds = {entry.split(":")[0] for entry in entries}
    if len(kinds) > 1:
        raise BadInputError(
            problem=f"devices mixes CPU and GPU entries ({text!r})",
            expected="all 'cuda:N' (NCCL) or all 'cpu' (gloo): one collective backend per run",
            fix="use only GPUs or only 'cpu' entries",
        )
    cuda = [entry for entry in entries if entry.startswith("cuda")]
    if len(set(cuda)) != len(cuda):
        raise BadInputError(
            problem=f"devices lists a GPU twice ({text!r})",
            expected="each GPU once (NCCL needs one rank per GPU)",
            fix="list every GPU once, e.g. cuda:0,cuda:1",
        )
    return entries


def compute_device(entry: str) -> torch.device:
    """The torch device a rank computes on: a "cpu:N" rank computes on the CPU like "cpu"."""
    device = torch.device(entry)
    return torch.device("cpu") if device.type == "cpu" else device


def check_devices_present(devices: tuple[str, ...]) -> None:
    """Refuse GPU entries this machine does not have (queue-time check; parse_devices checks syntax)."""
    cuda = [int(entry.split(":")[1]) for entry in devices if entry.startswith("cuda")]
    if not cuda:
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [f"cuda:{index}" for index in cuda if index >= count]
    if missing:
        raise BadInputError(
            problem=f"devices lists {', '.join(missing)}, but this machine has {count} CUDA GPU(s)",
            expected=f"GPUs cuda:0 to cuda:{count - 1}" if count else "a CUDA GPU for every 'cuda:N' entry",
            fix="list only GPUs that exist (nvidia-smi shows them), or leave devices empty",
        )
    if not torch.distributed.is_available() or not torch.distributed.is_nccl_available():
        raise BadInputError(
            problem="devices lists GPUs, but this PyTorch build has no NCCL backend",
            expected="a CUDA build of PyTorch with torch.distributed and NCCL (Linux)",
            fix="install a CUDA PyTorch wheel, or leave devices empty to use one GPU",
        )


def free_bytes_by_device(parent_device: torch.device, parent_bytes: int, devices: tuple[str, ...],
                         free_on: Callable[[str], int]) -> dict[str, int]:
    """What each device of a multi-device run has to plan with: the parent's own device its room
    (`parent_bytes`, free + evictable, as a one-device run plans), every other listed device `free_on(name)`.
    The parent plans size and steps for the smallest of them (each rank then re-plans its own levers)."""
    figures = {str(parent_device): parent_bytes}
    for name in devices:
        if name not in figures:
            figures[name] = free_on(name)
    return figures


def tightest_device(free_bytes: dict[str, int]) -> str:
    """The device with the least memory to plan with (`free_bytes_by_device`): the one the size is planned for."""
    return min(free_bytes, key=lambda name: free_bytes[name])
