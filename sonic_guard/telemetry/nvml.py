"""NVML readings through nvidia-ml-py (`pynvml`), opened and closed on every read.

Init/shutdown per read keeps no handle alive across suspend/resume (monitors that hold one report stale data
after sleep) and costs a few milliseconds. Every per-device query is optional: a field NVML cannot give is
None.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NvmlDevice:
    index: int
    name: str
    uuid: str
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    utilization_gpu_percent: int | None
    utilization_memory_percent: int | None
    temperature_c: int | None
    power_w: float | None
    process_used_bytes: int | None  # this process's GPU memory, when NVML can see our PID

    @property
    def uuid_key(self) -> str:
        return uuid_key(self.uuid)


@dataclass(frozen=True)
class NvmlReading:
    devices: list[NvmlDevice]
    status: str  # "ok" or why there is nothing
    driver_version: str | None = None
    notes: list[str] = field(default_factory=list)


def uuid_key(uuid: str | None) -> str:
    """A UUID in a form comparable between NVML ('GPU-1a2b...') and torch ('1a2b...')."""
    if not uuid:
        return ""
    text = uuid.strip().lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text


def _text(value: str | bytes) -> str:
    # Older nvidia-ml-py returns bytes for names and UUIDs, newer returns str.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _import_pynvml() -> ModuleType | None:
    try:
        with warnings.catch_warnings():
            # The deprecated `pynvml` shim package warns on import; nvidia-ml-py provides the same module.
            warnings.simplefilter("ignore", FutureWarning)
            import pynvml
    except ImportError:
        return None
    return pynvml


def describe_init_error(nvml: ModuleType, error: Exception) -> str:
    """Why NVML could not start, in words a user can act on."""
    kinds: list[tuple[str, str]] = [
        (
            "NVMLError_LibraryNotFound",
            "no NVIDIA driver library (libnvidia-ml not found): no NVIDIA GPU or driver",
        ),
        ("NVMLError_DriverNotLoaded", "NVIDIA driver library present but the driver is not loaded"),
        ("NVMLError_NoPermission", "no permission to query the NVIDIA driver"),
        (
            "NVMLError_LibRmVersionMismatch",
            "NVIDIA driver and library versions differ (reboot after updating)",
        ),
    ]
    for name, message in kinds:
        cls = getattr(nvml, name, None)
        if cls is not None and isinstance(error, cls):
            return message
    return f"NVML could not start ({type(error).__name__})"


def _optional(nvml: ModuleType, call: Callable[..., Any], *args: Any) -> Any:
    try:
        return call(*args)
    except nvml.NVMLError:
        return None


def _process_memory(nvml: ModuleType, handle: Any) -> int | None:
    processes = _optional(nvml, nvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
    pid = os.getpid()
    for process in processes:
        used = getattr(process, "usedGpuMemory", None)
        if getattr(process, "pid", None) == pid and used is not None:
            return int(used)
    return None


def _read_device(nvml: ModuleType, index: int, with_processes: bool) -> NvmlDevice:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    rates = _optional(nvml, nvml.nvmlDeviceGetUtilizationRates, handle)
    power_mw = _optional(nvml, nvml.nvmlDeviceGetPowerUsage, handle)
    return NvmlDevice(
        index=index,
        name=_text(_optional(nvml, nvml.nvmlDeviceGetName, handle) or "unknown"),
        uuid=_text(_optional(nvml, nvml.nvmlDeviceGetUUID, handle) or ""),
        memory_total_bytes=int(memory.total),
        memory_used_bytes=int(memory.used),
        memory_free_bytes=int(memory.free),
        utilization_gpu_percent=int(rates.gpu) if rates is not None else None,
        utilization_memory_percent=int(rates.memory) if rates is not None else None,
        temperature_c=_optional(nvml, nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU),
        power_w=power_mw / 1000.0 if power_mw is not None else None,
        process_used_bytes=_process_memory(nvml, handle) if with_processes else None,
    )


def read_nvml(with_processes: bool = True) -> NvmlReading:
    """All NVIDIA devices as NVML sees them (device-wide figures); never raises."""
    nvml = _import_pynvml()
    if nvml is None:
        return NvmlReading([], "nvidia-ml-py is not installed (pip install nvidia-ml-py)")
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return NvmlReading([], describe_init_error(nvml, exc))
    try:
        driver = _optional(nvml, nvml.nvmlSystemGetDriverVersion)
        count = nvml.nvmlDeviceGetCount()
        devices: list[NvmlDevice] = []
        notes: list[str] = []
        for index in range(count):
            try:
                devices.append(_read_device(nvml, index, with_processes))
            except nvml.NVMLError as exc:
                notes.append(f"NVML device {index} could not be read ({type(exc).__name__})")
        if with_processes and devices and all(d.process_used_bytes is None for d in devices):
            notes.append("this process's GPU memory is not visible to NVML (Windows WDDM or a container PID namespace)")
        status = "ok" if devices else ("NVML found no NVIDIA GPU" if count == 0 else "no NVIDIA GPU could be read")
        return NvmlReading(devices, status, _text(driver) if driver else None, notes)
    except nvml.NVMLError as exc:
        return NvmlReading([], f"NVML query failed ({type(exc).__name__})")
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError as exc:
            logger.debug("nvmlShutdown failed: %s", exc)
