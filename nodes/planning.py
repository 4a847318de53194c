"""Pre-flight for the editor badge and the Plan node: the estimator per model configuration (cached for the
server's lifetime) and the device's room. The policy itself is `sonic_guard.memory.preflight`, shared with the
generator."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..sonic_guard.errors import SonicGuardError
from ..sonic_guard.job import model_configs_from_folder, model_configs_of
from ..sonic_guard.memory.estimator import MemoryEstimator
from ..sonic_guard.memory.free_memory import device_label
from ..sonic_guard.memory.preflight import (
    dtype_name,
    inputs_from_widgets,
    plan_dtype,
    preflight_estimator,
    verdict,
)
from ..sonic_guard.models.configs import ModelConfigs
from . import comfy_bridge
from .services import services

logger = logging.getLogger(__name__)


def _estimator(configs: ModelConfigs) -> MemoryEstimator:
    """One estimator (and its per-shape cache) per model configuration, kept for the server's lifetime."""
    cache = services().estimators
    key = configs.fingerprint()
    if key not in cache:
        device = comfy_bridge.compute_device()
        # The allocator overhead fitted from this machine's past runs (labelled "uncalibrated" until there are some).
        calibration = services().history.calibration(device_label(device))
        fitted = calibration.source.startswith("history")
        # its simulated figures persist beside the run history: the first badge after a restart simulates nothing
        cache[key] = preflight_estimator(configs, device_type=device.type, history_path=services().history.path,
                                         calibration=calibration if fitted else None)
    return cache[key]


def estimator_for(handle) -> MemoryEstimator:
    return _estimator(model_configs_of(handle.models))


def _configs_for_folder(name: str | None) -> ModelConfigs:
    """The loader's folder, read from its config files; the full-size model when there is none or it is unreadable."""
    if name:
        try:
            root = comfy_bridge.resolve_model_root(name)
            return model_configs_from_folder(root, comfy_bridge.whisper_search(root))
        except (SonicGuardError, OSError, ValueError) as error:
            logger.info("planning for the full-size model: %s", error)
    return ModelConfigs.full_size()


def plan_from_widgets(widgets: dict[str, Any], *, dtype: torch.dtype | None = None,
                      estimator: MemoryEstimator | None = None) -> dict[str, Any]:
    """The verdict the editor badge and the Plan node show, for a square (cropped) face: the generator's
    pre-flight with the same inputs. `dtype` is the loaded model's; else the loader's `precision` widget."""
    device = comfy_bridge.compute_device()
    dtype = dtype or plan_dtype(str(widgets.get("precision") or "auto"), device.type)
    inputs = inputs_from_widgets(widgets, dtype=dtype_name(dtype), device_type=device.type)
    estimator = estimator or _estimator(_configs_for_folder(widgets.get("model_folder")))
    time_model = services().history.time_model(device_label(device))
    answer = verdict(inputs, comfy_bridge.room_on(device).plannable_bytes, estimator, time_model)
    return {**answer, "device": str(device)}
