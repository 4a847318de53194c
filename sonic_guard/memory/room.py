"""Room on the device for a run: what is free, what the host could evict, what each stage asks for, and what
was evicted.

The planner plans against free + evictable memory, so a model another node left loaded is unloaded (and reported
as a lever) before the run is made smaller. The host (ComfyUI's model management) does the unloading; this module
only does the arithmetic, so the badge, the Plan node and the generator see the same figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .estimator import STAGE_USES
from .plan import MemoryEstimate

GIB = 1024**3

# The loader's model names (what the engine places) as the memory model names them.
PLACED_AS: dict[str, str] = {
    "unet": "unet", "audio_token_projector": "audio_adapters", "motion_bucket_predictor": "audio_adapters",
    "vae": "vae", "image_encoder": "clip", "whisper_encoder": "whisper", "rife": "rife",
}


@dataclass(frozen=True)
class HeldModel:
    """A model the host holds on the device: its class name, its loaded bytes, and whether it is one of ours."""

    key: int  # identity of the host's record, to match before and after
    name: str
    loaded_bytes: int
    ours: bool = False


@dataclass(frozen=True)
class Eviction:
    model: str
    freed_bytes: int
    partial: bool = False

    @property
    def lever(self) -> str:
        """The entry in the report's levers ("evicted: <model class>, 3.1 GiB")."""
        extent = " (partly)" if self.partial else ""
        return f"evicted: {self.model}, {self.freed_bytes / GIB:.2f} GiB{extent}"

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "freed_bytes": self.freed_bytes, "partial": self.partial}


@dataclass(frozen=True)
class DeviceRoom:
    """Free memory (as the guard counts it) and what eviction would add."""

    free_bytes: int
    evictable_bytes: int
    evictable_models: tuple[str, ...] = ()

    @property
    def plannable_bytes(self) -> int:
        return self.free_bytes + self.evictable_bytes

    def note(self) -> str | None:
        if not self.evictable_bytes:
            return None
        names = ", ".join(self.evictable_models) or "loaded models"
        return (f"planned with {self.free_bytes / GIB:.2f} GiB free + {self.evictable_bytes / GIB:.2f} GiB that "
                f"ComfyUI can evict ({names})")


def device_room(free_bytes: int, held: Iterable[HeldModel], *, device_type: str,
                cap_bytes: int | None = None) -> DeviceRoom:
    """Free + evictable. Every held model counts, ours too (the plan counts our weights itself). With a cap
    (`free_memory_cap`) the cap bounds free + evicted together. On the CPU, unloading moves weights to the same
    RAM, so nothing is evictable there unless a cap bounds what models may hold."""
    held = [m for m in held if m.loaded_bytes > 0]
    if device_type == "cpu" and cap_bytes is None:
        return DeviceRoom(free_bytes, 0)
    evictable = sum(m.loaded_bytes for m in held)
    if cap_bytes is not None:
        evictable = max(0, min(evictable, cap_bytes - free_bytes))
    others = tuple(dict.fromkeys(m.name for m in held if not m.ours))
    return DeviceRoom(free_bytes, evictable, others)


def stage_room_bytes(estimate: MemoryEstimate, placed_name: str) -> int:
    """Device memory the stages using this model need in all (resident weights + activations + the allocator's
    overhead): what ComfyUI must make room for before the model is placed."""
    model = PLACED_AS.get(placed_name, placed_name)
    peaks = [stage.peak_bytes for name, stage in estimate.stages.items() if model in STAGE_USES.get(name, ())]
    return (max(peaks) if peaks else 0) + estimate.overhead_bytes


def stage_activation_bytes(estimate: MemoryEstimate, placed_name: str) -> int:
    """The activations (with overhead) of the stages using this model: ComfyUI's `memory_required`."""
    model = PLACED_AS.get(placed_name, placed_name)
    peaks = [stage.activation_bytes for name, stage in estimate.stages.items()
             if model in STAGE_USES.get(name, ())]
    return (max(peaks) if peaks else 0) + estimate.overhead_bytes


def evictions_between(before: Iterable[HeldModel], after: Iterable[HeldModel]) -> list[Eviction]:
    """Other models whose loaded bytes went down between two readings (unloaded wholly or partly)."""
    now: Mapping[int, HeldModel] = {m.key: m for m in after}
    found = []
    for model in before:
        if model.ours or model.loaded_bytes <= 0:
            continue
        left = now[model.key].loaded_bytes if model.key in now else 0
        if left < model.loaded_bytes:
            found.append(Eviction(model.name, model.loaded_bytes - left, partial=left > 0))
    return found
