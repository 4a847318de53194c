"""What the GPUs and the host hold right now: NVML per device, torch's allocator per device, host RAM.

The three GPU figures legitimately differ and are kept apart and labelled: NVML `used` is device-wide
(torch's reserved cache + CUDA context + other processes), torch `reserved` is this process's caching
allocator, torch `allocated` is live tensors only. NVML and torch may order devices differently, so they are
matched by UUID. Every reading is best effort: with no NVIDIA library, driver or GPU the readout says which
and still reports the host.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from .nvml import NvmlDevice, read_nvml
from .torch_memory import TorchDevice, read_torch_devices

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostMemory:
    total_bytes: int | None
    available_bytes: int | None
    process_rss_bytes: int | None
    source: str  # psutil | /proc/meminfo | unavailable


@dataclass(frozen=True)
class GpuReadout:
    nvml_devices: list[NvmlDevice]
    torch_devices: list[TorchDevice]
    host: HostMemory
    nvml_status: str  # "ok" or why NVML gave nothing
    torch_status: str  # "ok" or why torch has no CUDA figures
    driver_version: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def has_nvidia_gpu(self) -> bool:
        return bool(self.nvml_devices)

    @property
    def status(self) -> str:
        """One line for the user: what was read and, if anything is missing, why."""
        if self.nvml_devices:
            head = f"{len(self.nvml_devices)} NVIDIA GPU(s) read through NVML"
        else:
            head = f"no NVIDIA GPU readout: {self.nvml_status}"
        torch_part = (
            f"torch sees {len(self.torch_devices)} CUDA device(s)"
            if self.torch_devices
            else f"torch: {self.torch_status}"
        )
        return f"{head}; {torch_part}; host RAM from {self.host.source}"

    def key_numbers(self) -> dict[str, int | float | None]:
        """Flat figures for node outputs and metrics: first NVML GPU, torch totals, host RAM."""
        first = self.nvml_devices[0] if self.nvml_devices else None

        def torch_sum(attr: str) -> int | None:
            return sum(getattr(d, attr) for d in self.torch_devices) if self.torch_devices else None

        return {
            "gpu_count": len(self.nvml_devices),
            "gpu_total_bytes": first.memory_total_bytes if first else None,
            "gpu_used_bytes": first.memory_used_bytes if first else None,
            "gpu_free_bytes": first.memory_free_bytes if first else None,
            "gpu_utilization_percent": first.utilization_gpu_percent if first else None,
            "process_gpu_bytes": first.process_used_bytes if first else None,
            "torch_allocated_bytes": torch_sum("allocated_bytes"),
            "torch_reserved_bytes": torch_sum("reserved_bytes"),
            "torch_peak_allocated_bytes": torch_sum("max_allocated_bytes"),
            "host_total_bytes": self.host.total_bytes,
            "host_available_bytes": self.host.available_bytes,
            "process_rss_bytes": self.host.process_rss_bytes,
        }


def read_host_memory() -> HostMemory:
    """Host RAM through psutil (a ComfyUI dependency), else /proc/meminfo."""
    try:
        import psutil
    except ImportError:
        return _host_from_proc()
    vm = psutil.virtual_memory()
    rss = psutil.Process(os.getpid()).memory_info().rss
    return HostMemory(int(vm.total), int(vm.available), int(rss), "psutil")


def _host_from_proc() -> HostMemory:
    fields: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    fields[name] = int(parts[0]) * 1024
        with open("/proc/self/statm", encoding="ascii") as handle:
            rss = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return HostMemory(None, None, None, "unavailable")
    return HostMemory(fields.get("MemTotal"), fields.get("MemAvailable"), rss, "/proc/meminfo")


def match_by_uuid(
    torch_devices: list[TorchDevice], nvml_devices: list[NvmlDevice]
) -> tuple[list[TorchDevice], list[str]]:
    """Torch devices with `nvml_index` set from the NVML device of the same UUID (orders may differ)."""
    by_uuid = {d.uuid_key: d for d in nvml_devices if d.uuid_key}
    matched: list[TorchDevice] = []
    notes: list[str] = []
    for device in torch_devices:
        nvml_match = by_uuid.get(device.uuid_key) if device.uuid_key else None
        matched.append(device.with_nvml_index(nvml_match.index if nvml_match else None))
        if nvml_devices and nvml_match is None:
            notes.append(f"torch cuda:{device.index} has no NVML device with the same UUID")
    return matched, notes


def read_gpu_memory() -> GpuReadout:
    """Read NVML, torch and host memory now; never raises for a missing GPU, driver or library."""
    nvml = read_nvml()
    torch_devices, torch_status = read_torch_devices()
    matched, notes = match_by_uuid(torch_devices, nvml.devices)
    return GpuReadout(
        nvml_devices=nvml.devices,
        torch_devices=matched,
        host=read_host_memory(),
        nvml_status=nvml.status,
        torch_status=torch_status,
        driver_version=nvml.driver_version,
        notes=notes + nvml.notes,
    )
