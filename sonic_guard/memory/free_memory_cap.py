"""An optional cap on the device memory this server may hold: SONIC_GUARD_FREE_MEMORY_BYTES.

Users who share a GPU with other processes (a second ComfyUI, a game, a training job) can promise the guard less
than the driver reports; tests use it to make a run that does not fit on a machine with plenty of RAM. The cap
bounds what the server's loaded models and a Sonic run hold together, so models ComfyUI has loaded count against
it and are evictable within it (`room.DeviceRoom`). It only ever lowers the figure: the guard never plans with
more memory than the device really has free plus what eviction would return.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from ..errors import BadInputError

ENV_VAR = "SONIC_GUARD_FREE_MEMORY_BYTES"
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}
_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_byte_amount(text: str) -> int:
    """'6442450944', '6GiB', '6 GB', '512MiB' -> bytes. Raises BadInputError for anything else."""
    match = _AMOUNT.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise BadInputError(
            problem=f"{ENV_VAR}='{text}' is not an amount of memory",
            expected="a whole number of bytes, or a number with a unit: 6GiB, 6GB, 512MiB",
            fix=f"set {ENV_VAR} to e.g. 6GiB, or unset it to plan with the memory the device reports",
        )
    amount = int(float(match.group(1)) * _UNITS[unit])
    if amount <= 0:
        raise BadInputError(
            problem=f"{ENV_VAR}='{text}' is zero",
            expected="a positive amount of memory",
            fix=f"set {ENV_VAR} to the memory Sonic may use, e.g. 6GiB, or unset it",
        )
    return amount


def free_memory_cap(environ: Mapping[str, str] | None = None) -> int | None:
    """The cap from the environment in bytes, or None when the variable is unset or empty."""
    text = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    return parse_byte_amount(text) if text else None


def capped_free_memory(measured_bytes: int, environ: Mapping[str, str] | None = None, *,
                       loaded_bytes: int = 0) -> int:
    """The free memory to plan with: what the device reports, lowered to the cap less the `loaded_bytes` of
    models already held on the device when a cap is set."""
    cap = free_memory_cap(environ)
    return measured_bytes if cap is None else max(0, min(measured_bytes, cap - loaded_bytes))
