"""Named presets, resolved against the actual hardware by the planner (policy auto)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import BadInputError
from .fitted_corrections import TimeModel
from .plan import RunRequest
from .planner import DEFAULT_SAFETY_MARGIN, Estimator, PlanDecision, plan_run


@dataclass(frozen=True)
class Preset:
    name: str
    min_resolution: int
    inference_steps: int
    dynamic_scale: float = 1.0


PRESETS: dict[str, Preset] = {
    "fast": Preset("fast", 768, 20),
    "hd": Preset("HD", 1024, 30, dynamic_scale=1.2),
    "minimal": Preset("minimal", 384, 15),
}
# What the generator's preset widget offers: "custom" uses the widgets as they are.
PRESET_CHOICES: tuple[str, ...] = ("custom", *PRESETS)


def preset_request(name: str, base: RunRequest | None = None) -> RunRequest:
    """`base` (image size, audio length, device attention...) with the preset's resolution, steps and motion."""
    preset = PRESETS.get(name.strip().lower())
    if preset is None:
        raise BadInputError(problem=f"Unknown preset {name!r}", expected=f"one of {', '.join(PRESETS)}",
                            fix="pick a listed preset or set resolution and steps yourself")
    base = base or RunRequest()
    return replace(base, min_resolution=preset.min_resolution, inference_steps=preset.inference_steps,
                   dynamic_scale=preset.dynamic_scale,
                   resolution_floor=min(base.resolution_floor, preset.min_resolution))


def resolve_preset(name: str, free_bytes: int, estimator: Estimator, *, base: RunRequest | None = None,
                   time_budget_s: float | None = None, time_model: TimeModel | None = None,
                   safety_margin: float = DEFAULT_SAFETY_MARGIN) -> PlanDecision:
    """The preset as this hardware can run it: the planner's auto ladder on the preset's request."""
    return plan_run(preset_request(name, base), free_bytes, estimator, policy="auto", time_budget_s=time_budget_s,
                    time_model=time_model, safety_margin=safety_margin)
