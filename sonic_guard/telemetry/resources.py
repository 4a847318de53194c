"""What this process holds right now, to prove that runs do not leak: the logic behind GET /sonic/debug/resources.

Process RSS, threads, open file descriptors (psutil), live torch tensors (found by a garbage-collector walk), the
allocator's bytes on an NVIDIA GPU, and leftover temporary files of the pack; on request the most numerous object
types (a census). Counts and byte figures only, never paths or names.

Off by default. Every snapshot runs `gc.collect()` and walks every object the collector tracks, which costs a
fraction of a second and stalls the process, and the route is served to anyone who can reach ComfyUI's port. To
enable it, start the ComfyUI server with the environment variable

    SONIC_GUARD_DIAGNOSTICS=1   (also: true, yes, on)

Without it the route answers 403 with how to enable it. It is meant for tests, benches and operators, not for
scraping at a high rate (use /sonic/metrics for that).
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

ENV_VAR = "SONIC_GUARD_DIAGNOSTICS"
ROUTE = "/sonic/debug/resources"
_ON = frozenset({"1", "true", "yes", "on"})
# Names the pack gives files while they are being written (segments.py, long_audio.py, video_writer.py).
_TEMPORARY_MARKERS = (".tmp", ".partial.")
# Counting stops here: a folder with more leftovers than this is a leak whatever the exact number.
_MAX_SCANNED = 100_000
MAX_CENSUS = 200


def diagnostics_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether SONIC_GUARD_DIAGNOSTICS turns the resource snapshot on (off when unset or anything else)."""
    return (os.environ if environ is None else environ).get(ENV_VAR, "").strip().lower() in _ON


def process_rss_bytes() -> int:
    """Resident set size of this process; 0 where it cannot be read."""
    try:
        return int(psutil.Process().memory_info().rss)
    except psutil.Error:
        return 0


def open_file_count() -> int:
    """Open file descriptors of this process (handles on Windows); -1 where unknown."""
    process = psutil.Process()
    try:
        return int(process.num_fds()) if hasattr(process, "num_fds") else int(process.num_handles())
    except (psutil.Error, AttributeError):
        return -1


def os_thread_count() -> int:
    """All threads of the process, native ones included (OpenMP, ffmpeg); -1 where unknown."""
    try:
        return int(psutil.Process().num_threads())
    except psutil.Error:
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


def trim_heap() -> bool:
    """Hand freed heap pages back to the OS (glibc), so RSS shows what is held rather than what was once used."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


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


@dataclass(frozen=True)
class ResourceAnswer:
    """What the route sends back: an HTTP status and a JSON body."""

    status: int
    body: dict[str, Any]


def disabled_answer() -> ResourceAnswer:
    return ResourceAnswer(403, {
        "error": f"{ROUTE} is off: each snapshot collects garbage and walks every Python object of the server",
        "fix": f"start ComfyUI with the environment variable {ENV_VAR}=1 to enable it (tests, benches, leak hunts)",
    })


def answer_resource_request(query: Mapping[str, str], temporary_folders: Callable[[], list[Path]],
                            environ: Mapping[str, str] | None = None) -> ResourceAnswer:
    """The whole policy of GET /sonic/debug/resources: off unless SONIC_GUARD_DIAGNOSTICS is set; `?trim=1` trims
    the heap first; `?census=N` (0..200) adds the N most numerous object types."""
    if not diagnostics_enabled(environ):
        return disabled_answer()
    try:
        census = min(MAX_CENSUS, max(0, int(query.get("census", "0"))))
    except ValueError:
        return ResourceAnswer(400, {"error": "census must be a whole number of object types, e.g. ?census=30"})
    return ResourceAnswer(200, resource_snapshot(temporary_folders(), query.get("trim") == "1", census))
