"""GET /sonic/debug/resources: what this process holds right now, to prove that runs do not leak.

Process RSS, threads, open file descriptors, live torch tensors (found by a gc walk), the allocator's bytes on an
NVIDIA GPU, and leftover temporary files of the pack. Counts and byte figures only, never paths or names. The gc
walk costs a fraction of a second, so the handler runs it in a worker thread; it is meant for tests and operators,
not for scraping at a high rate (use /sonic/metrics for that).
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from aiohttp import web

# Names the pack gives files while they are being written (segments.py, long_audio.py, video_writer.py).
_TEMPORARY_MARKERS = (".tmp", ".partial.")
# Counting stops here: a folder with more leftovers than this is a leak whatever the exact number.
_MAX_SCANNED = 100_000


def process_rss_bytes() -> int:
    """Resident set size from /proc (Linux); 0 where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def open_file_count() -> int:
    """Open file descriptors of this process (Linux /proc/self/fd); -1 where unknown."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def os_thread_count() -> int:
    """All threads of the process, native ones included (OpenMP, ffmpeg); -1 where unknown."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


def live_tensor_stats() -> tuple[int, int]:
    """(count, bytes) of torch tensors reachable by the garbage collector, parameters included."""
    gc.collect()
    count = 0
    total = 0
    for obj in gc.get_objects():
        # type() rather than isinstance(): some lazy objects raise from a __class__ property.
        if issubclass(type(obj), torch.Tensor):
            count += 1
            if not obj.is_meta:
                total += obj.numel() * obj.element_size()
    return count, total


def temporary_file_count(folders: list[Path]) -> int:
    """Files still carrying the pack's being-written markers inside the given folders."""
    found = 0
    scanned = 0
    for folder in folders:
        if not folder.is_dir():
            continue
        for _, _, files in os.walk(folder):
            for name in files:
                scanned += 1
                found += any(marker in name for marker in _TEMPORARY_MARKERS)
            if scanned > _MAX_SCANNED:
                return found
    return found


def object_census(top: int) -> dict[str, int]:
    """The `top` most numerous kinds of object the garbage collector tracks (type names and counts only): two
    censuses a few hundred runs apart show what a slow leak is made of."""
    counts: dict[str, int] = {}
    for obj in gc.get_objects():
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1])[:top])


def gpu_allocator_bytes() -> dict[str, int] | None:
    """torch's CUDA allocator figures on the current device, or None without a GPU."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return {"allocated": int(torch.cuda.memory_allocated()), "reserved": int(torch.cuda.memory_reserved())}


def resource_snapshot(temporary_folders: list[Path], trim: bool = False, census: int = 0) -> dict[str, Any]:
    """Counts and bytes only; with `trim`, freed heap pages go back to the OS before RSS is read; with `census`,
    the most numerous object types too."""
    tensors, tensor_bytes = live_tensor_stats()  # collects garbage first
    if trim:
        trim_heap()
    extra = {"objects": object_census(census)} if census > 0 else {}
    return {
        **extra,
        "pid": os.getpid(),
        "rss_bytes": process_rss_bytes(),
        "threads": threading.active_count(),
        "os_threads": os_thread_count(),
        "open_files": open_file_count(),
        "live_tensors": tensors,
        "live_tensor_bytes": tensor_bytes,
        "temp_files": temporary_file_count(temporary_folders),
        "gpu": gpu_allocator_bytes(),
    }


def trim_heap() -> bool:
    """Hand freed heap pages back to the OS (glibc), so RSS shows what is held rather than what was once used."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def register_diagnostics(routes: web.RouteTableDef, temporary_folders: Callable[[], list[Path]]) -> None:
    """Add GET /sonic/debug/resources (?trim=1 trims the heap first, ?census=N adds the N most numerous object
    types) to ComfyUI's route table; call once.

    `temporary_folders` names the folders whose half-written files count as leftovers (ComfyUI's output folder,
    which holds the job folders too).
    """

    async def resources(request: web.Request) -> web.Response:
        trim = request.query.get("trim") == "1"
        try:
            census = min(200, max(0, int(request.query.get("census", "0"))))
        except ValueError:
            return web.json_response({"error": "census must be a whole number of object types, e.g. ?census=30"},
                                     status=400)
        snapshot = await asyncio.to_thread(resource_snapshot, temporary_folders(), trim, census)
        return web.json_response(snapshot, headers={"Cache-Control": "no-store"})

    routes.get("/sonic/debug/resources")(resources)
