"""The next plan after an out-of-memory error in a stage: the prediction was wrong, so step down regardless.

Levers aimed at the failing stage come first, in `LEVER_ORDER`; then min_resolution -64 down to the floor;
then None, and the pipeline's retry loop gives up with `OutOfMemoryAfterRetriesError`.
"""

from __future__ import annotations

from dataclasses import replace

from .levers import LEVER_ORDER
from .plan import SIZE_STEP, ExecutionPlan, frame_size

DEFAULT_RESOLUTION_FLOOR = 384


def next_rung_after_oom(plan: ExecutionPlan, stage: str, *, resolution_floor: int = DEFAULT_RESOLUTION_FLOOR,
                        supported_attention: tuple[str, ...] = ("flash", "mem_efficient", "math"),
                        image_size: tuple[int, int] | None = None) -> ExecutionPlan | None:
    """One step down from `plan` after an OOM in `stage`, or None when nothing is left to try.

    `image_size` (width, height) keeps the source aspect ratio when the resolution drops; without it the plan's
    own aspect ratio is used.
    """
    for lever in LEVER_ORDER:
        if stage not in lever.stages:
            continue
        stepped = lever.apply(plan, supported_attention)
        if stepped is not None:
            return replace(stepped, levers_applied=(*plan.levers_applied,
                                                    f"{stepped.levers_applied[-1]} (after OOM in {stage})"))
    lower = plan.min_resolution - SIZE_STEP
    if lower < resolution_floor:
        return None
    width, height = frame_size(lower, *(image_size or (plan.width, plan.height)))
    return plan.with_downgrade(f"min_resolution: {plan.min_resolution}→{lower} (after OOM in {stage})",
                               min_resolution=lower, width=width, height=height)
