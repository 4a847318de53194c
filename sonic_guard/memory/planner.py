"""The one place that owns memory policy: fit a requested run to the free memory, or refuse with reasons.

auto: a bounded ladder. Quality-neutral levers first (`levers.LEVER_ORDER`, each aimed at the stage that
dominates the peak and kept only if it lowers that stage), then min_resolution -64 per rung down to the floor,
then `MemoryPlanError`. strict: the requested plan runs as asked or is refused before running. off: the
requested plan with its prediction only. Steps are lowered only to meet an optional time budget.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..errors import MemoryPlanError
from .fitted_corrections import TimeModel
from .levers import LEVER_ORDER
from .plan import POLICIES, SIZE_STEP, ExecutionPlan, MemoryEstimate, RunRequest, frame_size

logger = logging.getLogger(__name__)

DEFAULT_SAFETY_MARGIN = 0.10
MIN_GAIN_BYTES = 64 * 1024**2
MIN_GAIN_FRACTION = 0.01
MAX_VERIFY_ROUNDS = 3
GIB = 1024**3


class Estimator(Protocol):
    def estimate(self, plan: ExecutionPlan, free_bytes: int | None = None, *,
                 exact: bool | None = None) -> MemoryEstimate: ...


@dataclass
class PlanDecision:
    """The plan to execute, its prediction, and how the planner got there."""

    plan: ExecutionPlan
    estimate: MemoryEstimate
    requested: ExecutionPlan
    requested_peak_bytes: int
    free_bytes: int
    budget_bytes: int
    safety_margin: float
    policy: str
    rungs: list[dict[str, Any]] = field(default_factory=list)
    predicted_seconds: float | None = None
    time_model_source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.estimate.peak_bytes <= self.budget_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy, "fits": self.fits, "plan": self.plan.to_dict(),
            "predicted_peak_bytes": self.estimate.peak_bytes, "requested_peak_bytes": self.requested_peak_bytes,
            "free_bytes": self.free_bytes, "budget_bytes": self.budget_bytes, "safety_margin": self.safety_margin,
            "levers_applied": list(self.plan.levers_applied), "downgrades": list(self.plan.downgrades),
            "estimate": self.estimate.to_dict(), "rungs": list(self.rungs),
            "predicted_seconds": self.predicted_seconds, "time_model": self.time_model_source,
            "notes": list(self.notes),
        }


def usable_bytes(free_bytes: int, safety_margin: float = DEFAULT_SAFETY_MARGIN) -> int:
    """Free memory the plan may use: `free_bytes` less the safety margin."""
    if not 0.0 <= safety_margin < 1.0:
        raise ValueError(f"safety_margin must be in [0, 1), got {safety_margin}")
    return int(free_bytes * (1.0 - safety_margin))


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f} GiB"


def _lower_resolution(plan: ExecutionPlan, request: RunRequest) -> ExecutionPlan | None:
    lower = plan.min_resolution - SIZE_STEP
    if lower < request.resolution_floor:
        return None
    width, height = frame_size(lower, request.image_width, request.image_height)
    return plan.with_downgrade(f"min_resolution: {plan.min_resolution}→{lower}", min_resolution=lower,
                               width=width, height=height)


def _gain(before: MemoryEstimate, after: MemoryEstimate, stage: str) -> bool:
    """A lever is kept only if it lowers the dominant stage by a meaningful amount (1 % or 64 MiB).

    A lever may remove the stage (decode no longer beside interpolation): then the new peak is what counts."""
    old = before.stages[stage].peak_bytes
    new = after.stages[stage].peak_bytes if stage in after.stages else after.raw_peak_bytes
    return old - new >= min(MIN_GAIN_BYTES, old * MIN_GAIN_FRACTION)


def _fit_memory(plan: ExecutionPlan, estimate: MemoryEstimate, request: RunRequest, estimator: Estimator,
                budget: int, rungs: list[dict[str, Any]],
                supported: tuple[str, ...]) -> tuple[ExecutionPlan, MemoryEstimate]:
    exhausted: set[str] = set()
    while estimate.peak_bytes > budget:
        dominant = estimate.dominant_stage
        chosen: tuple[ExecutionPlan, MemoryEstimate, str] | None = None
        for lever in LEVER_ORDER:
            if lever.name in exhausted or dominant not in lever.stages:
                continue
            candidate = lever.apply(plan, supported)
            if candidate is None:
                exhausted.add(lever.name)
                continue
            trial = estimator.estimate(candidate)
            step = candidate.levers_applied[-1]
            if _gain(estimate, trial, dominant):
                chosen = (candidate, trial, step)
                break
            exhausted.add(lever.name)  # no gain where it matters: keep the faster plan
            rungs.append({"step": step, "peak_bytes": trial.peak_bytes, "kept": False})
        if chosen is None:
            lowered = _lower_resolution(plan, request)
            if lowered is None:
                break
            exhausted.clear()  # a new size may make a skipped lever useful again
            chosen = (lowered, estimator.estimate(lowered), lowered.downgrades[-1])
        plan, estimate, step = chosen
        rungs.append({"step": step, "peak_bytes": estimate.peak_bytes, "kept": True})
    return plan, estimate


def _apply_time_budget(plan: ExecutionPlan, request: RunRequest, time_model: TimeModel,
                       time_budget_s: float | None, notes: list[str]) -> tuple[ExecutionPlan, float]:
    frames = request.generated_frames
    seconds = time_model.run_seconds(plan.width, plan.height, plan.inference_steps, frames, plan.cfg_batch)
    if time_budget_s is None or seconds <= time_budget_s:
        return plan, seconds
    per_step = (seconds - time_model.run_seconds(plan.width, plan.height, 0, frames, plan.cfg_batch))
    per_step /= plan.inference_steps
    fixed = seconds - per_step * plan.inference_steps
    steps = math.floor((time_budget_s - fixed) / per_step) if per_step > 0 else plan.inference_steps
    if steps < request.min_steps:
        steps = request.min_steps
        notes.append(f"time budget {time_budget_s:.0f} s cannot be met even at {steps} steps")
    if steps >= plan.inference_steps:
        return plan, seconds
    lowered = plan.with_downgrade(f"inference_steps: {plan.inference_steps}→{steps}", inference_steps=steps)
    return lowered, time_model.run_seconds(plan.width, plan.height, steps, frames, plan.cfg_batch)


def plan_run(request: RunRequest, free_bytes: int, estimator: Estimator, *, policy: str = "auto",
             time_budget_s: float | None = None, time_model: TimeModel | None = None,
             safety_margin: float = DEFAULT_SAFETY_MARGIN,
             supported_attention: tuple[str, ...] = ("flash", "mem_efficient", "math")) -> PlanDecision:
    """Decide the plan for `request` given `free_bytes` of device memory (see module docstring)."""
    if policy not in POLICIES:  # POLICIES lives with the plan, which records the policy it was made under
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    time_model = time_model or TimeModel()
    budget = usable_bytes(free_bytes, safety_margin)
    requested = request.requested_plan()
    requested_estimate = estimator.estimate(requested, exact=True)
    rungs: list[dict[str, Any]] = [{"step": "requested", "peak_bytes": requested_estimate.peak_bytes,
                                    "kept": True}]
    notes: list[str] = []
    if policy == "auto":
        plan, estimate = requested, requested_estimate
        for _ in range(MAX_VERIFY_ROUNDS):
            plan, estimate = _fit_memory(plan, estimate, request, estimator, budget, rungs, supported_attention)
            if estimate.exact:
                break
            # The ladder may have used area-scaled figures: confirm the chosen plan with a full simulation.
            estimate = estimator.estimate(plan, exact=True)
            rungs.append({"step": "verified by simulation", "peak_bytes": estimate.peak_bytes, "kept": True})
            if estimate.peak_bytes <= budget:
                break
    else:
        plan, estimate = requested, requested_estimate
    plan, seconds = _apply_time_budget(plan, request, time_model, time_budget_s, notes)
    plan = replace(plan, policy=policy)
    decision = PlanDecision(
        plan=plan, estimate=replace(estimate, free_bytes=free_bytes), requested=requested,
        requested_peak_bytes=requested_estimate.peak_bytes, free_bytes=free_bytes, budget_bytes=budget,
        safety_margin=safety_margin, policy=policy, rungs=rungs, predicted_seconds=seconds,
        time_model_source=time_model.source, notes=notes,
    )
    if policy == "off" or decision.fits:
        logger.info("memory plan (%s): %s predicted, %s usable, levers %s, downgrades %s", policy,
                    _gib(estimate.peak_bytes), _gib(budget), list(plan.levers_applied), list(plan.downgrades))
        return decision
    raise _refusal(decision, request)


def _refusal(decision: PlanDecision, request: RunRequest) -> MemoryPlanError:
    est = decision.estimate
    margin = f"{decision.safety_margin:.0%} safety margin"
    usable = f"{_gib(decision.budget_bytes)} may be used ({_gib(decision.free_bytes)} free, {margin})"
    needed_free = est.peak_bytes / (1.0 - decision.safety_margin)
    if decision.policy == "strict":
        error = MemoryPlanError(
            problem=(f"The requested run ({decision.plan.width}x{decision.plan.height}, {request.inference_steps} "
                     f"steps) is predicted to need {_gib(est.peak_bytes)} at its peak ({est.dominant_stage}), "
                     f"but only {usable}"),
            expected="a run whose predicted peak fits the free memory; policy 'strict' never changes the plan",
            fix=(f"set the memory policy to 'auto' so the planner may apply memory levers and lower the "
                 f"resolution, lower min_resolution, or free device memory to at least {_gib(needed_free)}"),
        )
    else:
        levers = ", ".join(decision.plan.levers_applied) or "none applicable"
        error = MemoryPlanError(
            problem=(f"Even at min_resolution {decision.plan.min_resolution} with every memory lever ({levers}), "
                     f"the run is predicted to need {_gib(est.peak_bytes)} ({est.dominant_stage}), but only "
                     f"{usable}"),
            expected=f"at least {_gib(needed_free)} of free device memory for the smallest plan",
            fix=("free device memory (close other programs, unload other models), lower the resolution floor "
                 f"below {request.resolution_floor}, or use a device with more memory"),
        )
    error.decision = decision  # type: ignore[attr-defined]
    return error
