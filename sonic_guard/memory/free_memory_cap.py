"""An optional cap on the device memory this server may hold: SONIC_GUARD_FREE_MEMORY_BYTES.

Users who share a GPU with other processes (a second ComfyUI, a game, a training job) can promise the guard less
than the driver reports; tests use it to make a run that does not fit on a machine with plenty of RAM. The cap
bounds what the server's loaded models and a Sonic run hold together, so models ComfyUI has loaded count against
it and are evictable within it (`room.DeviceRoom`). It only ever lowers the figure: the guard never plans with
more memory than the device really has free plus what eviction would return.

Per device: "cuda:1=6GiB,8GiB" caps cuda:1 at 6 GiB and every other device at 8 GiB; "cuda=8GiB" caps every GPU.
A multi-device run's ranks read their own device's entry, so GPUs shared unevenly each get their own budget
(and "cpu:0,cpu:1" CPU ranks can be given different budgets in tests).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..errors import BadInputError

ENV_VAR = "SONIC_GUARD_FREE_MEMORY_BYTES"
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}
_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DEVICE_KEY = re.compile(r"^(cpu|cuda|mps)(:\d+)?$")
EXAMPLE = "6GiB (every device), or per device: cuda:1=6GiB,8GiB (cuda:1 6 GiB, the others 8 GiB)"


def parse_byte_amount(text: str, *, entry: str | None = None) -> int:
    """'6442450944', '6GiB', '6 GB', '512MiB' -> bytes. Raises BadInputError for anything else; `entry` is the
    per-device entry the amount came from, for the message."""
    where = f"{ENV_VAR}='{text}'" if entry is None else f"{ENV_VAR} entry '{entry}'"
    match = _AMOUNT.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise BadInputError(
            problem=f"{where} is not an amount of memory",
            expected=f"a whole number of bytes, or a number with a unit: 6GiB, 6GB, 512MiB; e.g. {EXAMPLE}",
            fix=f"set {ENV_VAR} to e.g. 6GiB, or unset it to plan with the memory the device reports",
        )
    amount = int(float(match.group(1)) * _UNITS[unit])
    if amount <= 0:
        raise BadInputError(
            problem=f"{where} is zero",
            expected="a positive amount of memory",
            fix=f"set {ENV_VAR} to the memory Sonic may use, e.g. 6GiB, or unset it",
        )
    return amount


@dataclass(frozen=True)
class FreeMemoryCaps:
    """The parsed variable: a cap for every device (`default`) and caps for named devices or device kinds."""

    default: int | None = None
    by_device: dict[str, int] = field(default_factory=dict)

    def for_device(self, device: str | torch.device | None) -> int | None:
        """The cap of `device`: its own entry ("cuda:1"), else its kind's ("cuda"), else the default.
        None (the device is not known): the default."""
        if device is None:
            return self.default
        device = torch.device(device)
        for key in (str(device), device.type):
            if key in self.by_device:
                return self.by_device[key]
        return self.default


def parse_free_memory_caps(text: str) -> FreeMemoryCaps:
    """'8GiB' or 'cuda:1=6GiB,8GiB' (see module docstring) -> caps; raises BadInputError on bad text."""
    default: int | None = None
    by_device: dict[str, int] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            raise BadInputError(
                problem=f"{ENV_VAR}='{text}' has an empty entry",
                expected=f"entries separated by single commas, e.g. {EXAMPLE}",
                fix=f"remove the extra comma from {ENV_VAR}",
            )
        key, sep, amount = (part.strip() for part in entry.partition("="))
        if not sep:
            if default is not None:
                raise BadInputError(
                    problem=f"{ENV_VAR}='{text}' gives two caps for every device",
                    expected=f"at most one entry without a device, e.g. {EXAMPLE}",
                    fix="keep one plain amount and name the device of the other, e.g. cuda:1=6GiB",
                )
            default = parse_byte_amount(entry, entry=entry)
            continue
        if not _DEVICE_KEY.match(key):
            raise BadInputError(
                problem=f"{ENV_VAR} entry '{entry}' names '{key}', which is not a device",
                expected=f"'cuda:N', 'cuda' (every GPU), 'cpu', 'cpu:N' or 'mps' before the '=', e.g. {EXAMPLE}",
                fix="write the device as torch names it (nvidia-smi's GPU 1 is cuda:1)",
            )
        if key in by_device:
            raise BadInputError(
                problem=f"{ENV_VAR}='{text}' caps {key} twice",
                expected="each device named once",
                fix=f"keep one '{key}=...' entry",
            )
        by_device[key] = parse_byte_amount(amount, entry=entry)
    return FreeMemoryCaps(default, by_device)


def free_memory_caps(environ: Mapping[str, str] | None = None) -> FreeMemoryCaps:
    """The caps from the environment (none when the variable is unset or empty)."""
    text = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    return parse_free_memory_caps(text) if text else FreeMemoryCaps()


def free_memory_cap(environ: Mapping[str, str] | None = None,
                    device: str | torch.device | None = None) -> int | None:
    """The cap of `device` in bytes (None: the cap for every device), or None when nothing caps it."""
    return free_memory_caps(environ).for_device(device)


def capped_free_memory(measured_bytes: int, environ: Mapping[str, str] | None = None, *,
                       loaded_bytes: int = 0, device: str | torch.device | None = None) -> int:
    """The free memory to plan with: what the device reports, lowered to the device's cap less the `loaded_bytes`
    of models already held on the device when a cap is set."""
    cap = free_memory_cap(environ, device)
    return measured_bytes if cap is None else max(0, min(measured_bytes, cap - loaded_bytes))
