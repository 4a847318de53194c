"""What every run reports about memory and time (filled by the pipeline, stored by `RunHistory`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunReport:
    """One run: the plan, predicted vs measured peak, free memory before, levers, downgrades, retries, timings.

    `raw_predicted_bytes` is the simulated tensor peak without allocator overhead: history fits the overhead from
    it and `measured_peak_bytes` (the allocator's reserved peak). `unet_calls` and `unet_pixel_frames` (width x
    height x frames x batch of one call) let history fit the time model from `stage_seconds["unet"]`.
    """

    plan: dict[str, Any]
    predicted_peak_bytes: int
    raw_predicted_bytes: int
    raw_weight_bytes: int = 0  # weights resident at that peak (fragmentation applies to the rest)
    measured_peak_bytes: int | None = None
    free_before_bytes: int | None = None
    levers_applied: list[str] = field(default_factory=list)
    downgrades: list[str] = field(default_factory=list)
    retries: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    unet_calls: int = 0
    unet_pixel_frames: int = 0
    outcome: str = "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})
