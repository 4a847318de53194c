"""A health snapshot a load balancer can poll, and the classification of failures into reasons.

The snapshot is plain JSON-serialisable data: status ok/degraded with the problems that made it degraded,
free GPU memory (or null and why), queue length, last error (reason and time only, never a message or a
path), uptime.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ..errors import SonicGuardError
from .nvml import NvmlReading
from .torch_memory import TorchDevice

# Exception classes recognised by name: the core may not import ComfyUI and should not need torch here.
CANCEL_CLASS_NAMES = frozenset({"InterruptProcessingException", "KeyboardInterrupt"})
OOM_CLASS_NAMES = frozenset({"OutOfMemoryError"})


def classify_failure(error: BaseException) -> tuple[str, str]:
    """(outcome, reason) for a run that raised `error`; cancels are not failures of the pack."""
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & CANCEL_CLASS_NAMES:
        return "cancelled", "cancelled"
    if isinstance(error, SonicGuardError):
        return "failure", error.reason
    if names & OOM_CLASS_NAMES or "CUDA out of memory" in str(error)[:200]:
        return "failure", "oom"
    return "failure", "internal"


@dataclass(frozen=True)
class LastError:
    reason: str
    wall_time: float  # time.time() when it happened


@dataclass(frozen=True)
class Recoveries:
    """What the worker's runs did to fit memory since it started: OOM reruns, in-stage recoveries, evictions."""

    oom_retries: int = 0
    in_place: int = 0
    evictions: int = 0
    last_kind: str | None = None
    last_wall_time: float | None = None

    def after(self, report: dict[str, Any], now: float) -> Recoveries:
        """These counts plus one finished run's report."""
        retries = report.get("oom_retries", report.get("retries"))
        retries = len(retries) if isinstance(retries, (list, tuple)) else int(retries or 0)
        adjustments = list(report.get("adjustments") or ())
        evictions = sum(1 for a in adjustments if a.get("kind") == "evicted")
        in_place = len(adjustments) - evictions
        if not (retries or adjustments):
            return self
        last = "oom_retry" if retries else str(adjustments[-1].get("kind"))
        return Recoveries(self.oom_retries + retries, self.in_place + in_place, self.evictions + evictions,
                          last, now)

    def to_dict(self, now: float) -> dict[str, Any]:
        last = None
        if self.last_kind is not None and self.last_wall_time is not None:
            stamp = dt.datetime.fromtimestamp(self.last_wall_time, tz=dt.timezone.utc).isoformat(timespec="seconds")
            last = {"kind": self.last_kind, "time": stamp, "age_s": round(max(0.0, now - self.last_wall_time), 1)}
        return {"oom_retries": self.oom_retries, "in_place": self.in_place, "evictions": self.evictions, "last": last}


@dataclass(frozen=True)
class HealthThresholds:
    """When the worker reports itself degraded. None disables a check."""

    min_free_gpu_bytes: int | None = None
    require_gpu: bool = True  # a Sonic worker that cannot see a GPU is of no use to a GPU pool
    max_queue_length: int | None = None
    recent_oom_window_s: float = 120.0


def _gpu_section(nvml: NvmlReading, torch_devices: list[TorchDevice]) -> dict[str, Any]:
    if nvml.devices:
        devices = [
            {"gpu": d.index, "free_bytes": d.memory_free_bytes, "total_bytes": d.memory_total_bytes}
            for d in nvml.devices
        ]
        source, reason = "nvml", None
    else:
        devices = [
            {"gpu": d.index, "free_bytes": d.device_free_bytes, "total_bytes": d.device_total_bytes}
            for d in torch_devices
            if d.device_free_bytes is not None
        ]
        source, reason = ("torch", None) if devices else (None, nvml.status)
    frees = [d["free_bytes"] for d in devices]
    return {
        "free_bytes": min(frees) if frees else None,
        "source": source,
        "reason": reason,
        "devices": devices,
    }


def build_health(
    *,
    queue_length: int,
    nvml: NvmlReading,
    torch_devices: list[TorchDevice],
    last_error: LastError | None,
    uptime_s: float,
    now: float,
    thresholds: HealthThresholds,
    profiling_state: str,
    recoveries: Recoveries | None = None,
) -> dict[str, Any]:
    """The snapshot; `status` is "degraded" when any listed problem applies."""
    gpu = _gpu_section(nvml, torch_devices)
    problems: list[str] = []
    if gpu["free_bytes"] is None:
        if thresholds.require_gpu:
            problems.append("no_gpu_readout")
    elif thresholds.min_free_gpu_bytes is not None and gpu["free_bytes"] < thresholds.min_free_gpu_bytes:
        problems.append("low_gpu_memory")
    if thresholds.max_queue_length is not None and queue_length > thresholds.max_queue_length:
        problems.append("queue_full")
    error = None
    if last_error is not None:
        age = max(0.0, now - last_error.wall_time)
        stamp = dt.datetime.fromtimestamp(last_error.wall_time, tz=dt.timezone.utc).isoformat(timespec="seconds")
        error = {"reason": last_error.reason, "time": stamp, "age_s": round(age, 1)}
        if last_error.reason == "oom" and age <= thresholds.recent_oom_window_s:
            problems.append("recent_oom")
    return {
        "status": "degraded" if problems else "ok",
        "problems": problems,
        "gpu": gpu,
        "queue_length": int(queue_length),
        "last_error": error,
        "recoveries": (recoveries or Recoveries()).to_dict(now),
        "uptime_s": round(uptime_s, 1),
        "profiling": profiling_state,
    }


def health_http_status(snapshot: dict[str, Any]) -> int:
    """200 when ok, 503 when degraded: what a load balancer's health check expects."""
    return 200 if snapshot.get("status") == "ok" else 503
