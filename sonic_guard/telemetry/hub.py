"""`Telemetry`: the one object that owns metrics, profiling, the last error and stage timing.

The ComfyUI glue creates one per server and hands it (or a `RunObserver` from `telemetry.run(...)`) to the
engine, which only ever calls `observer.stage(name)`. Engine code runs unchanged with `NullStageObserver`
instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .device_snapshot import GpuReadout, read_gpu_memory
from .health import HealthThresholds, LastError, Recoveries, build_health, classify_failure
from .metrics import GpuCollector, SonicMetrics
from .nvml import NvmlReading, read_nvml
from .profiling import Profiler, ProfilerStatus, stage_tag_items
from .profiling_config import ProfilingConfig
from .stage_observer import Stage, StageRecorder, parse_stage
from .tags import check_run_tags
from .torch_memory import read_torch_devices

logger = logging.getLogger(__name__)


class _ObservedStage:
    """Context manager for one stage of a run (a class, not a generator: streamed stages switch often)."""

    __slots__ = ("_observer", "_stage", "_start", "_applied")

    def __init__(self, observer: RunObserver, stage: Stage) -> None:
        self._observer = observer
        self._stage = stage

    def __enter__(self) -> None:
        observer = self._observer
        self._applied = observer.profiler.push_tags(observer.tag_items[self._stage]) if observer.profile else None
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self._start
        observer = self._observer
        if observer.profile:
            observer.profiler.pop_tags(self._applied)
        observer.recorder.add(self._stage, seconds)
        observer.metrics.observe_stage(self._stage.value, seconds)


class RunObserver:
    """Observes one run: times each stage (histogram + this run's report) and tags it for the profiler."""

    def __init__(self, telemetry: Telemetry, tags: Mapping[str, str], profile: bool) -> None:
        self._telemetry = telemetry
        self.metrics = telemetry.metrics
        self.profiler = telemetry.profiler
        self.tags = tags
        self.profile = profile
        self.tag_items = {stage: stage_tag_items(stage, tags) for stage in Stage}
        self.recorder = StageRecorder()
        self._finished = False

    def stage(self, name: str | Stage) -> AbstractContextManager[None]:
        return _ObservedStage(self, parse_stage(name))

    def retag(self, updates: Mapping[str, str]) -> None:
        """Replace some run tags for the stages that start from now on (the planned size once it is known)."""
        self.tags = check_run_tags({**self.tags, **updates})
        self.tag_items = {stage: stage_tag_items(stage, self.tags) for stage in Stage}

    def stage_seconds(self) -> dict[str, float]:
        return self.recorder.seconds()

    def finish(self, report: Mapping[str, Any] | None = None, *, error: BaseException | None = None) -> dict:
        """Record the run once (outcome from `error` or the report); returns the report as recorded."""
        full = dict(report or {})
        full["stage_seconds"] = self.stage_seconds()
        if error is not None:
            full["outcome"], full["failure_reason"] = classify_failure(error)
        if not self._finished:
            self._finished = True
            self._telemetry.record_run(full, stages_already_observed=True)
        return full


class Telemetry:
    """Metrics registry, profiler, last error and health for one ComfyUI server. Thread-safe."""

    def __init__(
        self,
        *,
        thresholds: HealthThresholds | None = None,
        nvml_reader: Callable[[], NvmlReading] = lambda: read_nvml(with_processes=False),
    ) -> None:
        self.registry = CollectorRegistry()
        self.metrics = SonicMetrics(self.registry, GpuCollector(nvml_reader))
        self.profiler = Profiler()
        self.thresholds = thresholds or HealthThresholds()
        self._nvml_reader = nvml_reader
        self._lock = threading.Lock()
        self._last_error: LastError | None = None
        self._recoveries = Recoveries()
        self._started = time.monotonic()

    # Stages
    def run(self, tags: Mapping[str, str] | None = None, *, profile: bool = False) -> RunObserver:
        """An observer for one run. `tags` come from `tags.run_tags(...)`; `profile` applies them as thread
        tags (only while profiling is active)."""
        return RunObserver(self, check_run_tags(tags), profile and self.profiler.active)

    @contextmanager
    def stage(self, name: str | Stage) -> Iterator[None]:
        """A stage outside any run: timed into the histogram only, not tagged."""
        stage = parse_stage(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.observe_stage(stage.value, time.perf_counter() - start)

    # Runs and errors
    def record_run(self, report: Mapping[str, Any], *, stages_already_observed: bool = False) -> None:
        """Count a finished run.

        Report keys (all optional): outcome (success/failure/cancelled), failure_reason, predicted_peak_bytes,
        measured_peak_bytes, stage_seconds {stage: s}, downgrades ["lever: from→to" | lever | {"lever": ...}],
        retries [...] (or oom_retries: int), adjustments [{"kind": "evicted" | "decode_chunk", ...}].
        """
        outcome = self.metrics.record_run(report, stages_already_observed=stages_already_observed)
        with self._lock:
            self._recoveries = self._recoveries.after(dict(report), time.time())
        if outcome == "failure":  # a user's cancel is counted, but it is not the worker's last error
            self.record_error(str(report.get("failure_reason") or "internal"))

    def record_error(self, reason: str) -> None:
        """Remember the last error for /sonic/health (reason label and time only)."""
        with self._lock:
            self._last_error = LastError(self.metrics.reason_label(reason), time.time())

    @property
    def last_error(self) -> LastError | None:
        with self._lock:
            return self._last_error

    # Profiling
    def start_profiling(self, config: ProfilingConfig) -> ProfilerStatus:
        return self.profiler.start(config)

    def stop_profiling(self, timeout_s: float | None = None) -> ProfilerStatus:
        return self.profiler.stop(timeout_s)

    # Exposition
    def render_metrics(self) -> tuple[bytes, str]:
        """(body, content type) for GET /sonic/metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def health_snapshot(self, queue_length: int) -> dict[str, Any]:
        """JSON-serialisable health for GET /sonic/health; see `health.health_http_status` for the code."""
        nvml = self._nvml_reader()
        torch_devices, _ = read_torch_devices() if not nvml.devices else ([], "")
        return build_health(
            queue_length=queue_length,
            nvml=nvml,
            torch_devices=torch_devices,
            last_error=self.last_error,
            uptime_s=time.monotonic() - self._started,
            now=time.time(),
            thresholds=self.thresholds,
            profiling_state=self.profiler.status.state,
            recoveries=self.recoveries,
        )

    @property
    def recoveries(self) -> Recoveries:
        with self._lock:
            return self._recoveries

    def read_gpu_memory(self) -> GpuReadout:
        return read_gpu_memory()

    def close(self, timeout_s: float | None = None) -> None:
        """Stop profiling within its bound; metrics need no teardown."""
        self.profiler.stop(timeout_s)
