"""What a run will do, as decided by the planner: the only memory policy the engine executes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Plain names, not torch objects: a plan answered from the estimate cache needs no torch import (server restart).
DTYPES = ("float16", "bfloat16", "float32")
# SDPA backends a plan may name; "flash"/"mem_efficient" are O(tokens), "math" materialises the scores.
ATTENTION_BACKENDS = ("flash", "mem_efficient", "math")
O_TOKENS_BACKENDS = frozenset({"flash", "mem_efficient"})
# Models whose dtype is not the plan's: the official code keeps whisper in fp32; RIFE runs on fp32 frames.
FIXED_MODEL_DTYPES = {"whisper": "float32", "rife": "float32"}
SIZE_STEP = 64
# The estimate's stage for decode and interpolation running at once (`ExecutionPlan.overlap_decode`): composed by
# the estimator from the two simulated stages, aimed at by the levers that lower it.
OVERLAPPED_STAGE = "decode_interpolate"
# auto: the planner may change levers and size; strict: the requested plan or a refusal; off: no check at all.
POLICIES = ("auto", "strict", "off")
WINDOW_FRAMES = 25


def frame_size(min_resolution: int, image_width: int, image_height: int) -> tuple[int, int]:
    """Output (width, height) as official Sonic resizes: short side ~min_resolution, both multiples of 64."""
    scale = min_resolution / min(image_width, image_height)
    width = max(SIZE_STEP, round(image_width * scale / SIZE_STEP) * SIZE_STEP)
    height = max(SIZE_STEP, round(image_height * scale / SIZE_STEP) * SIZE_STEP)
    return int(width), int(height)


@dataclass(frozen=True)
class ExecutionPlan:
    """Every memory-relevant choice of one run. Frozen: levers make new plans with `with_changes`."""

    min_resolution: int = 512
    width: int = 512
    height: int = 512
    inference_steps: int = 25
    cfg_batch: int = 3  # 3: the CFG branches in one UNet call (official); 1: one branch at a time
    ff_chunk: int | None = None  # feed-forward split into this many pieces along the tokens (None: off)
    attention: str = "flash"  # "flash"/"mem_efficient" are O(tokens); "math" materialises the scores
    decode_chunk: int = 8  # frames per VAE decode call
    offload_idle_models: bool = False  # only the running stage's models on the device
    unet_weight_offload: bool = False  # stream UNet weights block by block from host memory
    # VAE decode on its own thread (and CUDA stream) beside interpolation: faster, but both peaks at once
    overlap_decode: bool = True
    dtype: str = "float16"
    interpolate: bool = True
    dynamic_scale: float = 1.0
    policy: str = "auto"  # the policy it was planned under: a multi-device rank may re-plan levers only under auto
    levers_applied: tuple[str, ...] = ()
    downgrades: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.width % SIZE_STEP or self.height % SIZE_STEP or self.width <= 0 or self.height <= 0:
            raise ValueError(f"width/height must be positive multiples of {SIZE_STEP}, got {self.width}x{self.height}")
        if self.cfg_batch not in (1, 3):
            raise ValueError(f"cfg_batch must be 3 (batched) or 1 (sequential), got {self.cfg_batch}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.decode_chunk < 1 or self.inference_steps < 1:
            raise ValueError("decode_chunk and inference_steps must be >= 1")
        if self.ff_chunk is not None and self.ff_chunk < 2:
            raise ValueError(f"ff_chunk must be None or >= 2, got {self.ff_chunk}")

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch  # only simulations and runs need the object

        return getattr(torch, self.dtype)

    @property
    def latent_size(self) -> tuple[int, int]:
        """(h, w) of the latents."""
        return self.height // 8, self.width // 8

    def with_lever(self, lever: str, **changes: Any) -> ExecutionPlan:
        """A copy with `changes` and `lever` appended to `levers_applied`."""
        return replace(self, levers_applied=(*self.levers_applied, lever), **changes)

    def with_downgrade(self, description: str, **changes: Any) -> ExecutionPlan:
        """A copy with `changes` and a "name: from→to" entry appended to `downgrades`."""
        return replace(self, downgrades=(*self.downgrades, description), **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["levers_applied"] = list(self.levers_applied)
        data["downgrades"] = list(self.downgrades)
        return data


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for, before the planner fits it to the hardware."""

    image_width: int = 512
    image_height: int = 512
    min_resolution: int = 512
    inference_steps: int = 25
    audio_seconds: float = 10.0
    dynamic_scale: float = 1.0
    interpolate: bool = True
    dtype: str = "float16"
    attention: str = "flash"  # the best backend the device supports (from the device probe)
    decode_chunk: int = 8
    resolution_floor: int = 384
    min_steps: int = 10

    def requested_plan(self) -> ExecutionPlan:
        width, height = frame_size(self.min_resolution, self.image_width, self.image_height)
        return ExecutionPlan(
            min_resolution=self.min_resolution, width=width, height=height, inference_steps=self.inference_steps,
            attention=self.attention, decode_chunk=self.decode_chunk, dtype=self.dtype,
            interpolate=self.interpolate, dynamic_scale=self.dynamic_scale,
        )

    @property
    def generated_frames(self) -> int:
        """N: Sonic generates every second 25 fps frame."""
        return max(1, int(self.audio_seconds * 25) // 2)


@dataclass
class StageEstimate:
    """Predicted device bytes of one stage: resident weights + the stage's activation peak."""

    name: str
    weights_bytes: int
    activation_bytes: int
    models: tuple[str, ...] = ()

    @property
    def peak_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes


@dataclass
class MemoryEstimate:
    """Per-stage peaks, the overall peak with allocator overhead, and which stage dominates."""

    stages: dict[str, StageEstimate]
    overhead_bytes: int
    calibration: str  # "uncalibrated" or where the allocator calibration came from
    simulated_seconds: float = 0.0
    cache_hits: int = 0
    free_bytes: int | None = None
    exact: bool = True  # False when some stage was scaled by area instead of simulated
    notes: list[str] = field(default_factory=list)

    @property
    def dominant_stage(self) -> str:
        return max(self.stages.values(), key=lambda s: s.peak_bytes).name

    @property
    def raw_peak_bytes(self) -> int:
        """Tensor bytes at the peak (what `torch.cuda.max_memory_allocated` would report)."""
        return self.stages[self.dominant_stage].peak_bytes

    @property
    def peak_bytes(self) -> int:
        """Predicted device peak including allocator overhead: compare this with free memory."""
        return self.raw_peak_bytes + self.overhead_bytes

    @property
    def fits(self) -> bool | None:
        """Whether the peak fits `free_bytes` (None when no free figure was given)."""
        return None if self.free_bytes is None else self.peak_bytes <= self.free_bytes

    def to_dict(self) -> dict[str, Any]:
        dominant = self.stages[self.dominant_stage]
        return {
            "peak_bytes": self.peak_bytes,
            "raw_peak_bytes": self.raw_peak_bytes,
            "overhead_bytes": self.overhead_bytes,
            "dominant_stage": dominant.name,
            "weights_bytes": dominant.weights_bytes,
            "activation_bytes": dominant.activation_bytes,
            "calibration": self.calibration,
            "free_bytes": self.free_bytes,
            "fits": self.fits,
            "stages": {
                name: {"weights_bytes": s.weights_bytes, "activation_bytes": s.activation_bytes,
                       "peak_bytes": s.peak_bytes, "models": list(s.models)}
                for name, s in self.stages.items()
            },
            "simulated_seconds": round(self.simulated_seconds, 3),
            "cache_hits": self.cache_hits,
            "exact": self.exact,
            "notes": list(self.notes),
        }
