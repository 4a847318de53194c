"""Pre-flight planning for the nodes and the editor badge: presets, the estimator per model, the plan verdict."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..sonic_guard.errors import SonicGuardError
from ..sonic_guard.job import model_configs_from_folder, model_configs_of
from ..sonic_guard.memory.estimator import MemoryEstimator
from ..sonic_guard.memory.free_memory import device_label
from ..sonic_guard.memory.model_specs import ModelConfigs
from ..sonic_guard.memory.plan import RunRequest
from ..sonic_guard.memory.planner import plan_run
from ..sonic_guard.memory.presets import PRESETS
from . import comfy_bridge as comfy
from .services import services

logger = logging.getLogger(__name__)

PLAN_DEFAULTS: dict[str, Any] = {
    "min_resolution": 512, "inference_steps": 25, "memory_policy": "auto", "preset": "custom",
    "time_budget_s": 0.0, "interpolation": "rife", "duration": 0.0, "dynamic_scale": 1.0,
}


def resolve_widgets(widgets: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Apply a preset (fast / hd / minimal). The planner then fits it to this device's free memory: a preset is
    resolved with the auto ladder even under policy strict, since it names a quality level, not a contract."""
    preset = str(widgets.get("preset", "custom")).lower()
    if preset == "custom":
        return dict(widgets)
    chosen = PRESETS[preset]
    return {**widgets, "min_resolution": chosen.min_resolution, "inference_steps": chosen.inference_steps,
            "dynamic_scale": chosen.dynamic_scale, "memory_policy": "auto"}


def _estimator(configs: ModelConfigs) -> MemoryEstimator:
    """One estimator (and its per-shape cache) per model configuration, kept for the server's lifetime."""
    cache = services().estimators
    key = configs.fingerprint()
    if key not in cache:
        device = comfy.compute_device()
        # The allocator overhead fitted from this machine's past runs (labelled "uncalibrated" until there are some).
        calibration = services().history.calibration(device_label(device))
        fitted = calibration.source.startswith("history")
        cache[key] = MemoryEstimator(configs, calibration if fitted else None,
                                     device_type=device.type)
    return cache[key]


def estimator_for(handle) -> MemoryEstimator:
    return _estimator(model_configs_of(handle.models))


def _configs_for_folder(name: str | None) -> ModelConfigs:
    """The loader's folder, read from its config files; the full-size model when there is none or it is unreadable."""
    if name:
        try:
            return model_configs_from_folder(comfy.resolve_model_root(name))
        except (SonicGuardError, OSError, ValueError) as error:
            logger.info("planning for the full-size model: %s", error)
    return ModelConfigs.full_size()


def plan_from_widgets(widgets: dict[str, Any]) -> dict[str, Any]:
    """The verdict the editor badge shows: fits / will downgrade / will not fit, for a square (cropped) face."""
    values = {**PLAN_DEFAULTS, **{k: v for k, v in widgets.items() if v is not None}}
    device = comfy.compute_device()
    values = resolve_widgets(values, device)
    resolution = int(values["min_resolution"])
    request = RunRequest(
        image_width=resolution, image_height=resolution, min_resolution=resolution,
        inference_steps=int(values["inference_steps"]), audio_seconds=float(values["duration"]) or 10.0,
        dynamic_scale=float(values["dynamic_scale"]), interpolate=values["interpolation"] != "none",
        dtype="float16" if device.type == "cuda" else "float32",
        attention="flash" if device.type in ("cuda", "cpu") else "math",  # torch has fused SDPA kernels there
    )
    estimator = _estimator(_configs_for_folder(values.get("model_folder")))
    free = comfy.free_memory_bytes(device)
    policy = str(values["memory_policy"])
    budget = float(values["time_budget_s"]) or None
    try:
        decision = plan_run(request, free, estimator, policy=policy, time_budget_s=budget)
    except Exception as error:  # noqa: BLE001 - MemoryPlanError: the badge shows the refusal
        return {"verdict": "refuse", "badge": "will not fit: " + str(error).split(".")[0], "error": str(error)}
    plan = decision.plan
    peak = decision.estimate.peak_bytes / 2**30
    if plan.downgrades:
        verdict, badge = "downgrade", f"will downgrade to {plan.width}x{plan.height} ({peak:.1f} GiB)"
    elif plan.levers_applied:
        verdict, badge = "fits", f"fits with {len(plan.levers_applied)} lever(s): {peak:.1f} GiB"
    else:
        verdict, badge = "fits", f"fits: {peak:.1f} GiB of {free / 2**30:.1f} GiB"
    return {"verdict": verdict, "badge": badge, "plan": decision.to_dict(), "device": str(device)}
