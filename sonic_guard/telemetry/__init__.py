"""Telemetry for Sonic Guard: GPU memory readout, stage timing, metrics, health, profiling.

One `Telemetry` object per server owns all of it; the engine sees only a `StageObserver`.
"""

from .device_snapshot import GpuReadout, HostMemory, read_gpu_memory, read_host_memory
from .gpu_table import format_table
from .health import HealthThresholds, classify_failure, health_http_status
from .hub import RunObserver, Telemetry
from .nvml import NvmlDevice, NvmlReading, read_nvml
from .profiling import Profiler, ProfilerStatus
from .profiling_config import ProfilingConfig
from .stage_observer import STAGE_NAMES, NullStageObserver, Stage, StageObserver, StageRecorder, parse_stage
from .tags import duration_bucket, parse_tag_text, run_tags, validate_tags
from .torch_memory import TorchDevice

__all__ = [
    "STAGE_NAMES",
    "GpuReadout",
    "HealthThresholds",
    "HostMemory",
    "NullStageObserver",
    "NvmlDevice",
    "NvmlReading",
    "Profiler",
    "ProfilerStatus",
    "ProfilingConfig",
    "RunObserver",
    "Stage",
    "StageObserver",
    "StageRecorder",
    "Telemetry",
    "TorchDevice",
    "classify_failure",
    "duration_bucket",
    "format_table",
    "health_http_status",
    "parse_stage",
    "parse_tag_text",
    "read_gpu_memory",
    "read_host_memory",
    "read_nvml",
    "run_tags",
    "validate_tags",
]
