"""Continuous profiling through pyroscope-io, optional and never in the way of generation.

pyroscope-io runs one agent per process (its state lives in the native library, not in this object): the
first successful `configure` wins until `shutdown`. `Profiler` owns that agent for the pack and is honest
about it: a second start with the same settings is a no-op, with different settings it keeps the first and
says so, and a start while an earlier shutdown is still flushing is refused. If anything else in the process
configured pyroscope-io first, `configure` returns False and profiling is reported off.

Tags are per OS thread (ComfyUI runs prompts on its `prompt_worker` thread), applied with `tag_wrapper`
around each stage. `stop()` runs the library's `shutdown()` (which flushes and can wait ~10 s per push on a
server that never answers) on a daemon thread and waits at most `stop_timeout_s`.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType, ModuleType

from .profiling_config import ProfilingConfig
from .stage_observer import Stage, parse_stage

logger = logging.getLogger(__name__)

# Agent-wide tags must stay low-cardinality: every series carries them.
STATIC_TAGS: Mapping[str, str] = MappingProxyType({"pack": "sonic_guard"})


@dataclass(frozen=True)
class ProfilerStatus:
    """Where profiling stands. `state` is a short code; `message` is for the user."""

    active: bool
    state: str  # active | off | not_installed | refused | failed | kept_first | stopped | stop_pending
    message: str


def _not_installed_message(error: BaseException) -> str:
    if sys.platform == "win32":
        why = "pyroscope-io has no Windows wheel (building it needs Rust)"
    else:
        why = f"pyroscope-io is not installed or failed to load ({type(error).__name__})"
    return f"profiling off: {why}; generation runs unprofiled. Install pyroscope-io on Linux or macOS to use it."


def stage_tag_items(stage: Stage, run_tags: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """The (key, value) pairs a stage is tagged with: the run's tags plus `stage`."""
    return (*((k, v) for k, v in (run_tags or {}).items() if k != "stage"), ("stage", stage.value))


class Profiler:
    """Starts, tags and stops the process's pyroscope-io agent. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._module: ModuleType | None = None
        self._config: ProfilingConfig | None = None
        self._stop_thread: threading.Thread | None = None
        self._depth = threading.local()  # per thread: nested stages keep the outer stage's tags
        self._status = ProfilerStatus(False, "off", "profiling off: not started")

    @property
    def status(self) -> ProfilerStatus:
        return self._status

    @property
    def active(self) -> bool:
        return self._status.active

    def start(self, config: ProfilingConfig) -> ProfilerStatus:
        """Configure the agent once; later calls report what stays in effect. Backend trouble never raises."""
        with self._lock:
            self._status = self._start_locked(config)
        level = logging.INFO if self._status.active else logging.WARNING
        logger.log(level, "%s", self._status.message)
        return self._status

    def _start_locked(self, config: ProfilingConfig) -> ProfilerStatus:
        if self._config is not None:
            if config.agent_settings() == self._config.agent_settings():
                return ProfilerStatus(True, "active", f"profiling on: {self._config.describe()}")
            return ProfilerStatus(
                True,
                "kept_first",
                f"profiling stays on with the first settings ({self._config.describe()}); pyroscope-io "
                f"allows one agent per process, so {config.describe()} was not applied. Restart ComfyUI to "
                "change them.",
            )
        if not config.enabled:
            return ProfilerStatus(False, "off", "profiling off: no Pyroscope server address given")
        if self._stop_thread is not None and self._stop_thread.is_alive():
            return ProfilerStatus(
                False,
                "stop_pending",
                "profiling off: the previous agent is still flushing to a server that does not answer; "
                "try again later or restart ComfyUI",
            )
        try:
            module = importlib.import_module("pyroscope")
        except (ImportError, OSError) as exc:
            return ProfilerStatus(False, "not_installed", _not_installed_message(exc))
        try:
            configured = module.configure(
                application_name=config.application_name,
                server_address=config.server_address,
                tenant_id=config.tenant_id or "",
                basic_auth_username=config.basic_auth_user or "",
                basic_auth_password=config.basic_auth_password or "",
                sample_rate=config.sample_rate,
                upload_interval=config.upload_interval_s,
                gil_only=False,  # with True, time inside torch kernels (GIL released) is invisible
                enable_logging=False,
                tags=dict(STATIC_TAGS),
            )
        except Exception as exc:  # noqa: BLE001 - native library boundary; must not break runs
            logger.warning("pyroscope.configure raised %s: %s", type(exc).__name__, exc)
            return ProfilerStatus(
                False, "failed", f"profiling off: pyroscope-io failed to start ({type(exc).__name__})"
            )
        if not configured:
            return ProfilerStatus(
                False,
                "refused",
                "profiling off: pyroscope-io refused to configure (another component of this process already "
                "runs a Pyroscope agent)",
            )
        self._module, self._config = module, config
        return ProfilerStatus(True, "active", f"profiling on: {config.describe()}")

    def push_tags(self, tags: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...] | None:
        """Apply thread tags (already validated); returns what to pass to `pop_tags`.

        Nested calls on one thread apply nothing: removing a key the outer block also set would strip its tag.
        Calls the native functions directly (not `tag_wrapper`): streamed stages switch often.
        """
        depth = getattr(self._depth, "value", 0)
        self._depth.value = depth + 1
        module = self._module
        if module is None or depth > 0:
            return None
        for key, value in tags:
            module.add_thread_tag(key, value)
        return tags

    def pop_tags(self, applied: tuple[tuple[str, str], ...] | None) -> None:
        self._depth.value = max(0, getattr(self._depth, "value", 1) - 1)
        module = self._module
        if applied and module is not None:
            for key, value in applied:
                module.remove_thread_tag(key, value)

    @contextmanager
    def stage_tags(self, stage: Stage | str, run_tags: Mapping[str, str] | None = None) -> Iterator[None]:
        """Label this thread's samples with the stage and run tags for the duration of the block."""
        applied = self.push_tags(stage_tag_items(parse_stage(stage), run_tags))
        try:
            yield
        finally:
            self.pop_tags(applied)

    def stop(self, timeout_s: float | None = None) -> ProfilerStatus:
        """Flush and shut the agent down on a daemon thread, waiting at most `timeout_s` (config default)."""
        with self._lock:
            module, config = self._module, self._config
            if module is None or config is None:
                return self._status
            self._module, self._config = None, None
            wait = config.stop_timeout_s if timeout_s is None else timeout_s
            thread = threading.Thread(target=self._shutdown, args=(module,), name="sonic-pyroscope-stop", daemon=True)
            self._stop_thread = thread
            thread.start()
        thread.join(wait)
        if thread.is_alive():
            status = ProfilerStatus(
                False,
                "stop_pending",
                f"profiling stopped; the last upload to {config.describe()} did not finish within "
                f"{wait:g} s and is left to a background thread (dropped at exit)",
            )
        else:
            status = ProfilerStatus(False, "stopped", "profiling stopped")
        with self._lock:
            self._status = status
        logger.info("%s", status.message)
        return status

    @staticmethod
    def _shutdown(module: ModuleType) -> None:
        try:
            module.shutdown()
        except Exception as exc:  # noqa: BLE001 - runs on a daemon thread; a failed flush only loses profiles
            logger.warning("pyroscope.shutdown raised %s: %s", type(exc).__name__, exc)
