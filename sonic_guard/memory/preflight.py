"""The pre-flight every caller shares: the editor's badge, the Plan node and the generator build their request and
ask the planner here, with the same inputs, so they cannot give different answers.

What differs between them is only what they know: the generator has the real image (its face crop decides the
aspect), the badge and the Plan node assume a square crop at the requested resolution and, without an audio
length, `DEFAULT_PLAN_SECONDS`.

They share one estimator per model configuration too (`preflight_estimator`): its simulated figures persist in
an `EstimateCache` beside the run history, so after a server restart the first pre-flight reads them back instead
of simulating the model again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BadInputError, MemoryPlanError
from ..models.configs import ModelConfigs
from .estimate_cache import EstimateCache
from .estimator import MemoryEstimator
from .fitted_corrections import AllocatorCalibration, TimeModel
from .plan import RunRequest
from .planner import POLICIES, Estimator, PlanDecision, plan_run
from .presets import PRESET_CHOICES, preset_request

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
DEFAULT_PLAN_SECONDS = 10.0  # the badge plans for 10 s when no duration is set (duration does not move the peak)
GIB = 1024**3


@dataclass(frozen=True)
class PreflightInputs:
    """Everything the plan depends on, from the widgets and what the caller knows of the inputs."""

    min_resolution: int = 512
    inference_steps: int = 25
    dynamic_scale: float = 1.0
    interpolation: str = "rife"
    memory_policy: str = "auto"
    preset: str = "custom"
    time_budget_s: float | None = None
    audio_seconds: float = DEFAULT_PLAN_SECONDS
    image_width: int | None = None  # the crop the resolution applies to; None = square at min_resolution
    image_height: int | None = None
    dtype: str = "float32"
    device_type: str = "cpu"

    def __post_init__(self) -> None:
        if self.memory_policy not in POLICIES:
            raise BadInputError(problem=f"memory_policy '{self.memory_policy}' is not known",
                                expected=f"one of {', '.join(POLICIES)}", fix="pick one of those")
        if self.preset.strip().lower() not in PRESET_CHOICES:
            raise BadInputError(problem=f"preset '{self.preset}' is not known",
                                expected=f"one of {', '.join(PRESET_CHOICES)}", fix="pick one of those")


def plan_dtype(precision: str, device_type: str) -> torch.dtype:
    """The dtype the loader casts UNet, VAE and CLIP to, and so the dtype every plan is made for."""
    if precision not in PRECISIONS:
        raise BadInputError(problem=f"precision '{precision}' is not known", expected=f"one of {PRECISIONS}",
                            fix="pick one of those")
    import torch  # the loader's question; a cached pre-flight itself needs no torch
    if precision == "auto":
        # fp16 is the reference's choice on GPUs; on the CPU many fp16 kernels are missing or slow.
        return torch.float16 if device_type in ("cuda", "mps") else torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def default_attention(device_type: str) -> str:
    """torch has fused SDPA kernels (O(tokens) memory) on CUDA and the CPU; elsewhere plan the math kernel."""
    return "flash" if device_type in ("cuda", "cpu") else "math"


def preflight_estimator(configs: ModelConfigs, *, device_type: str, history_path: str | Path | None,
                        calibration: AllocatorCalibration | None = None) -> MemoryEstimator:
    """The estimator the badge, the Plan node and the generator share for `configs` (keep one per configuration
    for the server's lifetime). With `history_path` (`RunHistory.path`) its figures persist beside the history;
    `calibration` None: the default allocator overhead for the device."""
    cache = EstimateCache.beside(history_path) if history_path is not None else None
    return MemoryEstimator(configs, calibration, device_type=device_type, cache=cache)


def build_request(inputs: PreflightInputs) -> RunRequest:
    """The planner's request: the widgets with the preset applied (a preset names resolution, steps and motion;
    the policy stays the user's: under strict a preset that does not fit is refused like any request)."""
    width = inputs.image_width or inputs.min_resolution
    height = inputs.image_height or inputs.min_resolution
    base = RunRequest(
        image_width=width, image_height=height, min_resolution=inputs.min_resolution,
        inference_steps=inputs.inference_steps, audio_seconds=inputs.audio_seconds or DEFAULT_PLAN_SECONDS,
        dynamic_scale=inputs.dynamic_scale, interpolate=inputs.interpolation != "none", dtype=inputs.dtype,
        attention=default_attention(inputs.device_type),
    )
    preset = inputs.preset.strip().lower()
    return base if preset == "custom" else preset_request(preset, base)


def decide(inputs: PreflightInputs, free_bytes: int, estimator: Estimator,
           time_model: TimeModel | None = None) -> PlanDecision:
    """The plan for these inputs on `free_bytes` (free + evictable device memory); raises MemoryPlanError."""
    return plan_run(build_request(inputs), free_bytes, estimator, policy=inputs.memory_policy,
                    time_budget_s=inputs.time_budget_s, time_model=time_model)


def inputs_from_widgets(widgets: Mapping[str, Any], *, dtype: str, device_type: str,
                        image_size: tuple[int, int] | None = None,
                        audio_seconds: float | None = None) -> PreflightInputs:
    """The generator's widget values (as the editor or the workflow holds them) as pre-flight inputs."""
    def get(name: str, default: Any) -> Any:
        value = widgets.get(name)
        return default if value is None else value

    budget = float(get("time_budget_s", 0.0)) or None
    seconds = audio_seconds if audio_seconds is not None else float(get("duration", 0.0)) or DEFAULT_PLAN_SECONDS
    return PreflightInputs(
        min_resolution=int(get("min_resolution", 512)), inference_steps=int(get("inference_steps", 25)),
        dynamic_scale=float(get("dynamic_scale", 1.0)), interpolation=str(get("interpolation", "rife")),
        memory_policy=str(get("memory_policy", "auto")), preset=str(get("preset", "custom")),
        time_budget_s=budget, audio_seconds=seconds,
        image_width=image_size[0] if image_size else None, image_height=image_size[1] if image_size else None,
        dtype=dtype, device_type=device_type,
    )


def verdict(inputs: PreflightInputs, free_bytes: int, estimator: Estimator,
            time_model: TimeModel | None = None) -> dict[str, Any]:
    """The badge's and the Plan node's answer: fits / will downgrade / will not fit, with the plan.

    Only the planner's refusal becomes a "will not fit" badge; any other error is a bug and propagates.
    """
    try:
        decision = decide(inputs, free_bytes, estimator, time_model)
    except MemoryPlanError as error:
        refused = getattr(error, "decision", None)
        return {"verdict": "refuse", "badge": "will not fit: " + str(error).split(".")[0], "error": str(error),
                "plan": refused.to_dict() if refused is not None else None}
    plan = decision.plan
    peak = decision.estimate.peak_bytes / GIB
    if plan.downgrades:
        answer, badge = "downgrade", f"will downgrade to {plan.width}x{plan.height} ({peak:.1f} GiB)"
    elif plan.levers_applied:
        answer, badge = "fits", f"fits with {len(plan.levers_applied)} lever(s): {peak:.1f} GiB"
    else:
        answer, badge = "fits", f"fits: {peak:.1f} GiB of {free_bytes / GIB:.1f} GiB"
    return {"verdict": answer, "badge": badge, "plan": decision.to_dict()}


def comparable(decision: PlanDecision | dict[str, Any]) -> dict[str, Any]:
    """A decision (or its dict, as the badge returns it) reduced to its answer, for equality checks: without
    wall-clock figures (simulation time, cache hits) and without the ladder's path (`rungs`), which depends on
    which shapes the shared estimator cache already holds (area-scaled or simulated figures on the way)."""
    data = dict(decision.to_dict() if isinstance(decision, PlanDecision) else decision)
    data.pop("rungs", None)
    data["estimate"] = {k: v for k, v in data["estimate"].items() if k not in ("simulated_seconds", "cache_hits")}
    return data
