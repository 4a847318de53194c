"""Each rank's own memory plan: the parent's output (size, steps, dtype) with levers re-planned for its device.

The parent plans what the video looks like against the tightest listed device; a rank then measures its own
device and asks the pack's planner (`memory.planner.plan_run`) again, with the resolution floor pinned to the
parent's size and no time budget, so only quality-neutral levers can change (cfg_batch, ff_chunk, UNet weight
streaming, idle models off the device). A rank with room to spare drops the slowing levers; one with less takes
more; one that cannot fit the size even with every lever refuses before the first collective. Under the parent's
policy: strict keeps the parent's levers and refuses where they do not fit; off runs them unchecked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ...errors import MemoryPlanError
from ...memory.estimator import MemoryEstimator
from ...memory.plan import ExecutionPlan, MemoryEstimate, RunRequest
from ...memory.planner import plan_run

GIB = 1024**3
# A rank runs only the UNet on its device (the parent encodes and decodes): only this stage is planned there.
RANK_STAGES = ("unet_window",)
# What a rank may change; everything else (what the video looks like) is the parent's.
RANK_LEVER_FIELDS = ("cfg_batch", "ff_chunk", "unet_weight_offload", "offload_idle_models")


class RankWontFitError(MemoryPlanError):
    """A rank's device cannot hold the run at the parent's size even with every quality-neutral lever."""


@dataclass(frozen=True)
class RankPlan:
    """What one rank will run with, as it reports it to the parent (and the run's report shows)."""

    rank: int
    device: str
    free_bytes: int
    predicted_peak_bytes: int
    cfg_batch: int
    ff_chunk: int | None
    unet_weight_offload: bool
    offload_idle_models: bool
    levers_applied: tuple[str, ...]

    def note(self) -> str:
        """"rank 1 (cuda:1): weight streaming on, 5.10 GiB free" for the report's notes."""
        levers = [("weight streaming on", self.unet_weight_offload),
                  ("CFG one branch at a time", self.cfg_batch == 1),
                  (f"feed-forward in {self.ff_chunk} chunks", self.ff_chunk is not None),
                  ("idle models off the device", self.offload_idle_models)]
        chosen = ", ".join(text for text, on in levers if on) or "no memory levers"
        return (f"rank {self.rank} ({self.device}): {chosen}, {self.free_bytes / GIB:.2f} GiB free "
                f"(predicted peak {self.predicted_peak_bytes / GIB:.2f} GiB)")

    def to_plain(self) -> dict[str, Any]:
        return {**asdict(self), "levers_applied": list(self.levers_applied), "note": self.note()}

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> RankPlan:
        fields = {k: v for k, v in plain.items() if k != "note"}
        return cls(**{**fields, "levers_applied": tuple(fields["levers_applied"])})


class RankStagesEstimator:
    """The pack's estimator, reduced to the stages a rank runs on its device (`RANK_STAGES`)."""

    def __init__(self, estimator: MemoryEstimator) -> None:
        self._estimator = estimator

    def estimate(self, plan: ExecutionPlan, free_bytes: int | None = None, *,
                 exact: bool | None = None) -> MemoryEstimate:
        full = self._estimator.estimate(plan, free_bytes, exact=exact)
        stages = {name: stage for name, stage in full.stages.items() if name in RANK_STAGES}
        raw = max(stage.peak_bytes for stage in stages.values())
        # the allocator overhead of the kept stages, as the estimator adds it to each stage
        overhead = self._estimator.calibration.overhead
        with_overhead = max(stage.peak_bytes + overhead(stage.activation_bytes) for stage in stages.values())
        return replace(full, stages=stages, overhead_bytes=with_overhead - raw)


def rank_request(plan: ExecutionPlan) -> RunRequest:
    """The parent's plan as a request whose size cannot be lowered (floor = its size) and whose steps stay."""
    short_side = min(plan.width, plan.height)
    return RunRequest(
        image_width=plan.width, image_height=plan.height, min_resolution=short_side,
        inference_steps=plan.inference_steps, dynamic_scale=plan.dynamic_scale, interpolate=plan.interpolate,
        dtype=plan.dtype, attention=plan.attention, decode_chunk=plan.decode_chunk,
        resolution_floor=short_side, min_steps=plan.inference_steps,
    )


def plan_rank(parent: ExecutionPlan, rank: int, device: str, free_bytes: int,
              estimator: MemoryEstimator) -> tuple[ExecutionPlan, RankPlan]:
    """The plan rank `rank` runs on `device` with `free_bytes`: the parent's with its own levers.

    Raises RankWontFitError (naming the rank, the device, the bytes needed and free) when nothing fits.
    """
    if parent.policy == "off":  # the user asked for no checks: the parent's levers as they are
        return parent, _rank_plan(parent, rank, device, free_bytes,
                                  RankStagesEstimator(estimator).estimate(parent).peak_bytes)
    try:
        # strict: the parent's levers or a refusal; auto: this device's own quality-neutral levers
        decision = plan_run(rank_request(parent), free_bytes, RankStagesEstimator(estimator),
                            policy=parent.policy)
    except MemoryPlanError as error:
        refused = getattr(error, "decision", None)
        raise _wont_fit(parent, rank, device, free_bytes, refused) from error
    chosen = decision.plan
    plan = parent if parent.policy == "strict" else replace(
        parent, **{name: getattr(chosen, name) for name in RANK_LEVER_FIELDS}, levers_applied=chosen.levers_applied)
    return plan, _rank_plan(plan, rank, device, free_bytes, decision.estimate.peak_bytes)


def _rank_plan(plan: ExecutionPlan, rank: int, device: str, free_bytes: int, peak_bytes: int) -> RankPlan:
    return RankPlan(
        rank=rank, device=device, free_bytes=free_bytes, predicted_peak_bytes=peak_bytes,
        cfg_batch=plan.cfg_batch, ff_chunk=plan.ff_chunk, unet_weight_offload=plan.unet_weight_offload,
        offload_idle_models=plan.offload_idle_models, levers_applied=plan.levers_applied,
    )


def _wont_fit(parent: ExecutionPlan, rank: int, device: str, free_bytes: int, refused: Any) -> RankWontFitError:
    levers = ", ".join(refused.plan.levers_applied) if refused is not None else "every lever"
    if parent.policy == "strict":
        levers = "the run's own levers (memory policy strict changes none)"
    peak = refused.estimate.peak_bytes if refused is not None else 0
    margin = refused.safety_margin if refused is not None else 0.0
    needed = peak / (1.0 - margin)
    return RankWontFitError(
        problem=(f"rank {rank} ({device}) cannot run the sampling at {parent.width}x{parent.height} "
                 f"({parent.dtype}) even with {levers or 'every lever'}: it needs {needed / GIB:.2f} GiB free "
                 f"({peak} bytes predicted peak + {margin:.0%} safety margin) but has {free_bytes / GIB:.2f} GiB "
                 f"({free_bytes} bytes) free"),
        expected="every listed device to hold the UNet at the size the run was planned for",
        fix=(f"free memory on {device} (another process may hold it), raise its SONIC_GUARD_FREE_MEMORY_BYTES "
             f"entry (e.g. {device}=8GiB), remove {device} from devices, or lower min_resolution"
             + ("; or set the memory policy to 'auto' so this device may take memory levers"
                if parent.policy == "strict" else "")),
    )
