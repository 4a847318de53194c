"""The SONIC_MODEL value that flows between the pack's nodes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from comfy_api.v0_0_2 import io

from ..sonic_guard.telemetry.profiling_config import ProfilingConfig

SonicModelType = io.Custom("SONIC_MODEL")


@dataclass(frozen=True)
class SonicModelHandle:
    """Loaded models (on the offload device), their ComfyUI patchers, and per-graph options.

    Frozen: nodes that add options (profiling) return a copy, so a cached loader output is never mutated.
    """

    models: Any  # sonic_guard.models.checkpoints.SonicModelSet
    patchers: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    source: str
    profiling: ProfilingConfig | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
