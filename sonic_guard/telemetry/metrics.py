"""Prometheus metrics for the pack, in a registry of their own (never the process-global default one).

Labels are low-cardinality by construction: outcomes, failure reasons and stages are fixed sets, lever names
are checked and capped, GPUs are labelled by NVML index. Unknown values fall into "other".
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from ..errors import SonicGuardError
from .nvml import NvmlReading, read_nvml
from .stage_observer import STAGE_NAMES

logger = logging.getLogger(__name__)

OUTCOMES = ("success", "failure", "cancelled")
EXTRA_REASONS = ("oom", "cancelled", "internal", "other")
STAGE_BUCKETS_S = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)
# Signed (measured - predicted) / predicted, as in the run report: positive means the run needed more than
# predicted (the dangerous direction).
ERROR_BUCKETS = (-0.5, -0.25, -0.1, -0.05, -0.02, 0.0, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
LEVER_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,39}")
MAX_LEVERS = 32


def known_failure_reasons() -> frozenset[str]:
    """Every `reason` in the error hierarchy plus the outcomes that are not SonicGuardErrors."""
    reasons = set(EXTRA_REASONS)
    pending: list[type[SonicGuardError]] = [SonicGuardError]
    while pending:
        cls = pending.pop()
        reasons.add(cls.reason)
        pending.extend(cls.__subclasses__())
    return frozenset(reasons)


class GpuCollector:
    """Reads NVML at scrape time: memory and utilisation per GPU, labelled by NVML index."""

    def __init__(self, read: Callable[[], NvmlReading] = lambda: read_nvml(with_processes=False)) -> None:
        self._read = read

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        return self._families(self._read())

    def _families(self, reading: NvmlReading | None = None) -> list[Metric]:
        def family(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["gpu"])

        used = family("sonic_gpu_memory_used_bytes", "GPU memory used on the device (NVML, all processes)")
        free = family("sonic_gpu_memory_free_bytes", "GPU memory free on the device (NVML)")
        total = family("sonic_gpu_memory_total_bytes", "GPU memory on the device (NVML)")
        util = family("sonic_gpu_utilization_ratio", "GPU busy fraction over NVML's last sample period")
        up = GaugeMetricFamily("sonic_gpu_readout_up", "1 when NVML could be read at this scrape, else 0")
        if reading is not None:
            for device in reading.devices:
                gpu = [str(device.index)]
                used.add_metric(gpu, device.memory_used_bytes)
                free.add_metric(gpu, device.memory_free_bytes)
                total.add_metric(gpu, device.memory_total_bytes)
                if device.utilization_gpu_percent is not None:
                    util.add_metric(gpu, device.utilization_gpu_percent / 100.0)
            up.add_metric([], 1.0 if reading.devices else 0.0)
        return [used, free, total, util, up]


class SonicMetrics:
    """The metric objects, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry, gpu_collector: GpuCollector | None = None) -> None:
        self._lock = threading.Lock()
        self._levers: set[str] = set()
        self.reasons = known_failure_reasons()
        self.runs = Counter("sonic_runs", "Finished Sonic runs by outcome", ["outcome"], registry=registry)
        self.failures = Counter("sonic_failures", "Failed or cancelled runs by reason", ["reason"], registry=registry)
        self.stage_seconds = Histogram(
            "sonic_stage_seconds",
            "Wall time per stage",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=registry,
        )
        self.predicted_peak = Gauge(
            "sonic_predicted_peak_bytes", "Predicted GPU peak of the last run", registry=registry
        )
        self.measured_peak = Gauge(
            "sonic_measured_peak_bytes", "Measured GPU peak (torch) of the last run", registry=registry
        )
        self.estimator_error = Histogram(
            "sonic_estimator_relative_error",
            "(measured - predicted) / predicted peak; positive = the run needed more than predicted",
            buckets=ERROR_BUCKETS,
            registry=registry,
        )
        self.downgrades = Counter(
            "sonic_downgrades",
            "Quality downgrades applied to fit memory, by lever",
            ["lever"],
            registry=registry,
        )
        self.levers = Counter(
            "sonic_levers_applied",
            "Quality-neutral memory levers applied, by lever",
            ["lever"],
            registry=registry,
        )
        self.oom_retries = Counter("sonic_oom_retries", "Retries after a CUDA out-of-memory", registry=registry)
        self.recovered_in_place = Counter(
            "sonic_oom_recovered_in_place",
            "Out-of-memory errors recovered inside a stage without a rerun (decode chunk halving), by kind",
            ["kind"],
            registry=registry,
        )
        self.evictions = Counter(
            "sonic_evictions", "Other models ComfyUI unloaded to make room for a run", registry=registry
        )
        self.evicted_bytes = Counter(
            "sonic_evicted_bytes", "Bytes of other models unloaded to make room for runs", registry=registry
        )
        for outcome in OUTCOMES:
            self.runs.labels(outcome=outcome)
        for stage in STAGE_NAMES:
            self.stage_seconds.labels(stage=stage)
        registry.register(gpu_collector or GpuCollector())

    def reason_label(self, reason: str | None) -> str:
        return reason if reason in self.reasons else "other"

    def lever_label(self, lever: str) -> str:
        if not LEVER_PATTERN.fullmatch(lever):
            return "other"
        with self._lock:
            if lever not in self._levers and len(self._levers) >= MAX_LEVERS:
                return "other"
            self._levers.add(lever)
        return lever

    def observe_stage(self, stage: str, seconds: float) -> None:
        if stage in STAGE_NAMES and seconds >= 0:
            self.stage_seconds.labels(stage=stage).observe(seconds)

    def record_run(self, report: Mapping[str, Any], *, stages_already_observed: bool = False) -> str:
        """Count one finished run from its report; returns the outcome label used."""
        reason = report.get("failure_reason")
        outcome = str(report.get("outcome") or ("failure" if reason else "success"))
        outcome = outcome if outcome in OUTCOMES else "failure"
        self.runs.labels(outcome=outcome).inc()
        if outcome != "success":
            default = "cancelled" if outcome == "cancelled" else "internal"
            self.failures.labels(reason=self.reason_label(reason or default)).inc()
        if not stages_already_observed:
            for stage, seconds in (report.get("stage_seconds") or {}).items():
                self.observe_stage(str(stage), float(seconds))
        self._record_peaks(report.get("predicted_peak_bytes"), report.get("measured_peak_bytes"))
        for lever in _lever_names(report.get("downgrades") or ()):
            self.downgrades.labels(lever=self.lever_label(lever)).inc()
        for lever in _lever_names(report.get("levers_applied") or ()):
            self.levers.labels(lever=self.lever_label(lever)).inc()
        retries = report.get("oom_retries", report.get("retries"))
        retries = len(retries) if isinstance(retries, (list, tuple)) else int(retries or 0)
        if retries > 0:
            self.oom_retries.inc(retries)
        for adjustment in report.get("adjustments") or ():
            kind = str(adjustment.get("kind", "other"))
            if kind == "evicted":
                self.evictions.inc()
                self.evicted_bytes.inc(max(0, int(adjustment.get("freed_bytes") or 0)))
            else:
                self.recovered_in_place.labels(kind=kind if LEVER_PATTERN.fullmatch(kind) else "other").inc()
        return outcome

    def _record_peaks(self, predicted: object, measured: object) -> None:
        if isinstance(predicted, (int, float)) and predicted > 0:
            self.predicted_peak.set(predicted)
        if isinstance(measured, (int, float)) and measured > 0:
            self.measured_peak.set(measured)
            if isinstance(predicted, (int, float)) and predicted > 0:
                self.estimator_error.observe((measured - predicted) / predicted)


def _lever_names(downgrades: Iterable[object]) -> Iterator[str]:
    """Downgrades as lever names: "name: from->to" strings (the plan's form), names, or {"lever": name}."""
    for item in downgrades:
        if isinstance(item, str):
            yield item.split(":", 1)[0].strip()
        elif isinstance(item, Mapping) and isinstance(item.get("lever"), str):
            yield item["lever"]
        else:
            logger.debug("ignoring a downgrade entry without a lever name: %r", type(item).__name__)
