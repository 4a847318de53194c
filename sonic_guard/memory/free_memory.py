"""How much device memory a run may use, and how much it actually used.

Inside ComfyUI the glue passes its own probe (`comfy.model_management.get_free_memory`, which counts torch's
cached-but-free blocks); elsewhere `torch_free_memory` asks torch. CPU and Apple MPS are answered honestly: the
figure is host RAM, or the MPS recommended working set, and `notes` say what is not known.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import psutil
import torch

from .free_memory_cap import capped_free_memory

logger = logging.getLogger(__name__)


def cuda_allocator_kind(environ: Mapping[str, str] | None = None) -> str:
    """How torch's CUDA allocator packs memory: "cudaMallocAsync" (ComfyUI's default on CUDA builds),
    "expandable_segments" or "native". The allocator's overhead differs several-fold between them."""
    environ = os.environ if environ is None else environ
    try:
        backend = torch.cuda.get_allocator_backend()  # reads the configuration; creates no CUDA context
    except (AttributeError, RuntimeError):
        backend = "native"
    if backend != "native":
        return str(backend)
    config = ",".join(environ.get(name, "") for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"))
    if "expandable_segments:true" in config.replace(" ", "").lower():
        return "expandable_segments"
    return "native"


def device_label(device: torch.device) -> str:
    """How history groups runs: the GPU model and allocator kind (calibration is per both), else the device type."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({cuda_allocator_kind()})"
    return device.type


@dataclass(frozen=True)
class FreeMemory:
    """Free bytes on a device, where the figure came from, and its caveats."""

    free_bytes: int
    total_bytes: int | None
    device: str
    source: str
    notes: tuple[str, ...] = ()


class FreeMemoryProbe(Protocol):
    def __call__(self) -> FreeMemory: ...


def torch_free_memory(device: str | torch.device = "cuda") -> FreeMemory:
    """Free memory of `device` as torch sees it (CUDA, MPS or CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        # Blocks torch has reserved but not handed out are free for this process too.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return FreeMemory(int(free + cached), int(total), str(device), "torch.cuda.mem_get_info + torch cache")
    if device.type == "mps":
        return _mps_free_memory()
    available = psutil.virtual_memory()
    return FreeMemory(int(available.available), int(available.total), "cpu", "psutil available RAM",
                      ("device is the CPU: the estimate targets host RAM, where the allocator has no 512 B "
                       "blocks and no CUDA workspaces",))


def planned_free_bytes(device: str | torch.device, environ: Mapping[str, str] | None = None) -> int:
    """Free bytes of `device` as torch measures it, lowered to its SONIC_GUARD_FREE_MEMORY_BYTES entry: what a
    multi-device run plans each listed device with (outside ComfyUI's model management, nothing is evictable)."""
    return capped_free_memory(torch_free_memory(device).free_bytes, environ, device=device)


def _mps_free_memory() -> FreeMemory:
    recommended = getattr(torch.mps, "recommended_max_memory", None)
    driver = getattr(torch.mps, "driver_allocated_memory", None)
    notes = ["MPS shares unified memory with the OS and other apps; the working-set figure is advisory"]
    if recommended is None:
        available = psutil.virtual_memory().available
        notes.append("recommended working set unknown on this torch: host available RAM used instead")
        return FreeMemory(int(available), None, "mps", "psutil available RAM", tuple(notes))
    used = int(driver()) if driver is not None else 0
    if driver is None:
        notes.append("driver-allocated memory unknown: assumed 0")
    limit = int(recommended())
    return FreeMemory(max(0, limit - used), limit, "mps", "torch.mps.recommended_max_memory", tuple(notes))


def probe_from_callable(get_free: Callable[[], int], device: str, source: str) -> FreeMemoryProbe:
    """Wrap a host's own free-memory function (e.g. ComfyUI's) as a probe."""

    def probe() -> FreeMemory:
        return FreeMemory(int(get_free()), None, device, source)

    return probe


@contextmanager
def device_memory_cap(device: str | torch.device, cap_bytes: int | None) -> Iterator[None]:
    """Hold this process's CUDA allocator to `cap_bytes` (a real OOM beyond it) while the block runs: how a
    smaller GPU is reproduced for calibration and benchmarks. No-op for None or a non-CUDA device."""
    device = torch.device(device)
    if cap_bytes is None or device.type != "cuda":
        yield
        return
    if device.index is None:  # set_per_process_memory_fraction refuses a bare "cuda"
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total), device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
