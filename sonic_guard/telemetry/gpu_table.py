"""A readable monospace table of a `GpuReadout`, each figure labelled with where it comes from."""

from __future__ import annotations

from collections.abc import Sequence

from .device_snapshot import GpuReadout

GIB = 1024**3

EXPLANATION = (
    "NVML used = whole device: torch reserved + CUDA context + other processes.",
    "torch reserved = this process's caching allocator: live tensors + idle cache (ComfyUI counts the cache as free).",
    "torch allocated = live tensors only; peak = highest allocated since start or the last reset.",
)


def gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / GIB:.2f} GiB"


def _optional(value: object, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def format_table(readout: GpuReadout) -> str:
    """Status line, NVML devices, torch allocator, host RAM and what the three GPU figures mean."""
    out = [f"GPU memory readout: {readout.status}"]
    if readout.driver_version:
        out.append(f"NVIDIA driver {readout.driver_version}")
    out.append("")
    if readout.nvml_devices:
        out.append("NVIDIA devices (NVML, device-wide)")
        out += _table(
            ["gpu", "name", "total", "used", "free", "util", "temp", "power", "this process", "uuid"],
            [
                [
                    str(d.index),
                    d.name,
                    gib(d.memory_total_bytes),
                    gib(d.memory_used_bytes),
                    gib(d.memory_free_bytes),
                    _optional(d.utilization_gpu_percent, "%"),
                    _optional(d.temperature_c, " C"),
                    _optional(d.power_w, " W"),
                    gib(d.process_used_bytes),
                    d.uuid[:16],
                ]
                for d in readout.nvml_devices
            ],
        )
    else:
        out.append(f"NVIDIA devices: none ({readout.nvml_status})")
    out.append("")
    if readout.torch_devices:
        out.append("torch CUDA allocator (this process)")
        out += _table(
            ["cuda", "nvml gpu", "allocated", "reserved", "peak allocated", "device free (cudaMemGetInfo)"],
            [
                [
                    str(d.index),
                    _optional(d.nvml_index, ""),
                    gib(d.allocated_bytes),
                    gib(d.reserved_bytes),
                    gib(d.max_allocated_bytes),
                    gib(d.device_free_bytes),
                ]
                for d in readout.torch_devices
            ],
        )
    else:
        out.append(f"torch CUDA allocator: none ({readout.torch_status})")
    out.append("")
    host = readout.host
    out.append(f"Host RAM ({host.source})")
    out += _table(
        ["total", "available", "this process (RSS)"],
        [[gib(host.total_bytes), gib(host.available_bytes), gib(host.process_rss_bytes)]],
    )
    out.append("")
    out += [f"note: {text}" for text in (*readout.notes, *EXPLANATION)]
    return "\n".join(out)
