"""torch's caching-allocator figures per CUDA device (this process only).

Reading never creates a CUDA context: a device torch has not used yet reports zeros without `mem_get_info`
(which would initialise a context of several hundred MB on it).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from .nvml import uuid_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchDevice:
    index: int
    name: str
    uuid: str | None
    allocated_bytes: int  # live tensors
    reserved_bytes: int  # held by the caching allocator (live tensors + idle cache)
    max_allocated_bytes: int  # peak of allocated since start or the last reset_peak_memory_stats
    device_free_bytes: int | None  # cudaMemGetInfo, device-wide; None when it would need a new context
    device_total_bytes: int | None
    nvml_index: int | None = None  # the NVML device with the same UUID, when there is one

    @property
    def uuid_key(self) -> str:
        return uuid_key(self.uuid)

    def with_nvml_index(self, nvml_index: int | None) -> TorchDevice:
        return dataclasses.replace(self, nvml_index=nvml_index)


def read_torch_devices() -> tuple[list[TorchDevice], str]:
    """(devices, status); status is "ok" or why there are no CUDA figures."""
    try:
        import torch
    except ImportError:
        return [], "torch is not installed"
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None and torch.version.hip is None else "a CUDA build"
        return (
            [],
            f"torch.cuda is not available (torch {torch.__version__}, {build}; no usable GPU or driver)",
        )
    if not torch.cuda.is_initialized():
        return [], "CUDA not initialised in this process yet (no tensors on the GPU)"
    devices: list[TorchDevice] = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        raw_uuid = getattr(props, "uuid", None)
        reserved = int(torch.cuda.memory_reserved(index))
        free = total = None
        if reserved > 0:  # a context exists on this device already
            free, total = (int(v) for v in torch.cuda.mem_get_info(index))
        devices.append(
            TorchDevice(
                index=index,
                name=str(props.name),
                uuid=str(raw_uuid) if raw_uuid is not None else None,
                allocated_bytes=int(torch.cuda.memory_allocated(index)),
                reserved_bytes=reserved,
                max_allocated_bytes=int(torch.cuda.max_memory_allocated(index)),
                device_free_bytes=free,
                device_total_bytes=total,
            )
        )
    return devices, "ok"
