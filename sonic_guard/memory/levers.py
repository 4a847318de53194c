"""Quality-neutral memory levers: each changes how a run executes, never what it produces.

`LEVER_ORDER` is the order the planner tries them, cheapest in run time first:
1. fused attention (flash / memory-efficient) instead of math, where the device has it: usually faster too;
2. smaller VAE decode chunks (8 -> 4 -> 2 -> 1 frames): a little less parallelism in a short stage;
   then decode before interpolation instead of beside it: the slower of the two stops hiding the other;
3. idle models off the device: one host<->device copy per stage change;
4. feed-forward chunking (4 pieces along the tokens): a few percent slower;
5. CFG branches one at a time instead of batched: three UNet calls per window instead of one;
6. UNet weights streamed block by block from host memory: slowest, last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .plan import O_TOKENS_BACKENDS, OVERLAPPED_STAGE, ExecutionPlan

DECODE_STAGES = frozenset({"vae_decode", OVERLAPPED_STAGE})
ALL_STAGES = frozenset({"face_detect", "clip_encode", "audio_features", "vae_encode", "unet_window", "interpolate",
                        *DECODE_STAGES})
FF_CHUNK_RUNGS = (4,)  # more pieces cost time and gained < 1 % in simulation at 512-1024 px


@dataclass(frozen=True)
class Lever:
    """One rung: `apply` returns the changed plan, or None where the lever cannot go further."""

    name: str
    stages: frozenset[str]
    apply: Callable[[ExecutionPlan, tuple[str, ...]], ExecutionPlan | None]


def _fused_attention(plan: ExecutionPlan, supported: tuple[str, ...]) -> ExecutionPlan | None:
    if plan.attention in O_TOKENS_BACKENDS:
        return None
    for backend in ("flash", "mem_efficient"):
        if backend in supported:
            return plan.with_lever(f"attention: {plan.attention}→{backend}", attention=backend)
    return None


def _smaller_decode_chunk(plan: ExecutionPlan, supported: tuple[str, ...]) -> ExecutionPlan | None:
    if plan.decode_chunk <= 1:
        return None
    smaller = max(1, plan.decode_chunk // 2)
    return plan.with_lever(f"decode_chunk: {plan.decode_chunk}→{smaller}", decode_chunk=smaller)


def _serial_decode(plan: ExecutionPlan, supported: tuple[str, ...]) -> ExecutionPlan | None:
    if not plan.overlap_decode:
        return None
    return plan.with_lever("overlap_decode: on→off", overlap_decode=False)


def _offload_idle(plan: ExecutionPlan, supported: tuple[str, ...]) -> ExecutionPlan | None:
    if plan.offload_idle_models:
        return None
    return plan.with_lever("offload_idle_models: off→on", offload_idle_models=True)


def _ff_chunking(plan: ExecutionPlan, supported: tuple[str, ...]) -> ExecutionPlan | None:
    current = plan.ff_chunk or 1
    for pieces in FF_CHUNK_RUNGS:
        if pieces > current:
            return plan.with_lever(f"ff_chunk: {plan.ff_chunk}→{pieces}", ff_chunk=pieces)
    return None


def _sequential_cfg(plan: ExecutionPlan, supported: tuple[str, ...]) -> ExecutionPlan | None:
    if plan.cfg_batch == 1:
        return None
    return plan.with_lever("cfg_batch: 3→1", cfg_batch=1)


def _unet_weight_offload(plan: ExecutionPlan, supported: tuple[str, ...]) -> ExecutionPlan | None:
    if plan.unet_weight_offload:
        return None
    return plan.with_lever("unet_weight_offload: off→on", unet_weight_offload=True)


LEVER_ORDER: tuple[Lever, ...] = (
    Lever("attention", ALL_STAGES, _fused_attention),
    Lever("decode_chunk", DECODE_STAGES, _smaller_decode_chunk),
    Lever("overlap_decode", frozenset({"interpolate", *DECODE_STAGES}), _serial_decode),
    Lever("offload_idle_models", ALL_STAGES, _offload_idle),
    Lever("ff_chunk", frozenset({"unet_window"}), _ff_chunking),
    Lever("cfg_batch", frozenset({"unet_window"}), _sequential_cfg),
    # Streaming UNet weights also shrinks every other stage while idle models stay resident.
    Lever("unet_weight_offload", ALL_STAGES, _unet_weight_offload),
)
