"""A generation job end to end: pre-flight plan, the run under OOM recovery, and the report.

This is what the generator node calls. Memory policy lives in `memory.planner`; the engine in `pipeline`;
telemetry in `telemetry`. Here they are put in order, and every decision is written into the report.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .conditioning.reference_image import PreparedReference, prepare_reference
from .errors import MemoryPlanError
from .face import make_face_detector
from .inputs.audio_loading import LoadedAudio
from .memory.estimator import MemoryEstimator
from .memory.fitted_corrections import cfg_call_batches
from .memory.free_memory import device_label, planned_free_bytes
from .memory.history import RunHistory
from .memory.plan import ExecutionPlan, MemoryEstimate
from .memory.planner import PlanDecision
from .memory.preflight import PreflightInputs, decide, dtype_name
from .memory.recovery import next_rung_after_oom
from .memory.report import RunReport
from .memory.room import DeviceRoom
from .models.checkpoint_paths import ModelPaths, WhisperSearch
from .models.checkpoints import AUDIO_TOKENS, SonicModelSet, read_unet_config
from .models.configs import ModelConfigs
from .runs.guarded_run import OomRetry, run_with_oom_recovery
from .runs.long_audio import generate_segmented
from .runs.pipeline import GenerationResult, generate
from .runs.runtime import ModelPlacer, OnAdjustment, RunHooks
from .runs.segment_inputs import segment_frames_for
from .sampling.multi_device.devices import free_bytes_by_device, tightest_device
from .settings import GenerationSettings

logger = logging.getLogger(__name__)

# The pipeline's stages, as the memory model names the parts that peak in them.
ESTIMATOR_STAGE = {
    "preprocess": "clip_encode",
    "audio_features": "audio_features",
    "sampling": "unet_window",
    "decode": "vae_decode",
    "interpolation": "interpolate",
    "encode": "vae_decode",  # frames are pulled through decode while encoding
}


@dataclass
class JobRequest:
    image: Any  # anything image_prep accepts: HxWx3 uint8, float [0,1] array/tensor, PIL
    audio: LoadedAudio  # already fitted to the requested duration
    settings: GenerationSettings
    output_path: Path
    policy: str = "auto"
    preset: str = "custom"  # a preset names resolution, steps and motion (memory.presets); the policy stays
    time_budget_s: float | None = None
    collect_frames: bool = False
    notes: list[str] = field(default_factory=list)
    segment_seconds: float = 0.0  # 0 = automatic: one clip up to 30 s, else 20 s segments (long_audio)
    job_dir: Path | None = None  # where segments are kept for resume; None = next to output_path


@dataclass
class JobEnvironment:
    """What the host provides: the device, its free memory, how to recognise and recover from OOM.

    `device_room` (free + what the host can evict) is what the run is planned against when the host can evict
    other models (ComfyUI); without it the plan uses `free_memory`. `placer_for(plan, estimate, on_adjustment)`
    places models for each stage and reports evictions through `on_adjustment`.
    """

    device: torch.device
    free_memory: Callable[[], int]
    is_oom: Callable[[BaseException], bool]
    release_memory: Callable[[], None]
    estimator: MemoryEstimator
    placer_for: Callable[[ExecutionPlan, MemoryEstimate, OnAdjustment], ModelPlacer] | None = None
    device_room: Callable[[], DeviceRoom] | None = None
    hooks: RunHooks = field(default_factory=RunHooks)
    # "planned" (size and steps of each attempt), "downgraded", "oom_recovered", "evicted"
    on_event: Callable[[str, dict], None] = lambda event, data: None
    max_retries: int = 3
    history: RunHistory | None = None  # calibrates the time model; every finished run is recorded in it
    # free bytes of another listed device of a multi-device run (its SONIC_GUARD_FREE_MEMORY_BYTES entry applies)
    free_memory_on: Callable[[str], int] = planned_free_bytes


@dataclass
class JobOutcome:
    result: GenerationResult
    report: dict[str, Any]


def model_configs_of(models: SonicModelSet) -> ModelConfigs:
    """The estimator simulates the modules the user actually loaded (full-size or small)."""
    whisper = getattr(models.whisper_encoder, "config", None)
    clip = getattr(models.image_encoder, "config", None)
    vae = getattr(models.vae, "config", None)
    base = ModelConfigs()
    return replace(
        base,
        unet=dict(models.unet.config),
        vae=dict(vae) if vae is not None else base.vae,
        clip=clip.to_dict() if clip is not None else base.clip,
        whisper=whisper.to_dict() if whisper is not None else base.whisper,
        fixed_weights={},
        audio_tokens=int(models.audio_token_projector.context_tokens),
    )


def model_configs_from_folder(root: Path, whisper: WhisperSearch | None = None) -> ModelConfigs:
    """The same configurations read from a model folder's config files, without loading any weights (the
    editor's badge plans for the folder the loader points at); `whisper` is where the loader found whisper-tiny
    (default: beside the Sonic files, then the Hugging Face cache)."""
    paths = ModelPaths.from_root(root, whisper=whisper)

    def read(path: Path) -> dict[str, Any]:
        return json.loads(path.read_text())

    return replace(
        ModelConfigs(),
        unet=read_unet_config(paths),
        vae=read(paths.svd / "vae" / "config.json"),
        clip=read(paths.svd / "image_encoder" / "config.json"),
        whisper=read(paths.whisper / "config.json"),
        fixed_weights={},
        audio_tokens=AUDIO_TOKENS,
    )


def preflight_inputs(reference: PreparedReference, settings: GenerationSettings, audio_seconds: float,
                     device: torch.device, *, policy: str, preset: str, time_budget_s: float | None,
                     dtype: str) -> PreflightInputs:
    """The generator's pre-flight inputs: the badge's, with the real crop size and audio length."""
    width, height = _source_size(reference)
    return PreflightInputs(
        min_resolution=settings.min_resolution, inference_steps=settings.inference_steps,
        dynamic_scale=settings.dynamic_scale, interpolation=settings.interpolation, memory_policy=policy,
        preset=preset, time_budget_s=time_budget_s, audio_seconds=audio_seconds, image_width=width,
        image_height=height, dtype=dtype, device_type=device.type,
    )


def plan_for(inputs: PreflightInputs, plannable_bytes: int, env: JobEnvironment) -> PlanDecision:
    time_model = env.history.time_model(device_label(env.device)) if env.history else None
    return decide(inputs, plannable_bytes, env.estimator, time_model)


def plan_on_tightest(inputs: PreflightInputs, device_free: dict[str, int], env: JobEnvironment) -> PlanDecision:
    """The plan for the device with the least memory among the run's (one device: the run's own); a refusal
    names that device when it is not the server's own."""
    tightest = tightest_device(device_free)
    try:
        return plan_for(inputs, device_free[tightest], env)
    except MemoryPlanError as error:
        if tightest == str(env.device):
            raise
        named = MemoryPlanError(
            problem=f"{tightest} has the least free memory of the listed devices ({device_free[tightest]} bytes): "
                    f"{error.problem}",
            expected=error.expected,
            fix=f"{error.fix.rstrip('.')}; or free memory on {tightest}, raise its SONIC_GUARD_FREE_MEMORY_BYTES "
                f"entry, or remove it from devices",
        )
        named.decision = getattr(error, "decision", None)  # type: ignore[attr-defined]
        raise named from error


def run_job(models: SonicModelSet, job: JobRequest, env: JobEnvironment) -> JobOutcome:
    started = time.perf_counter()
    detector = make_face_detector(models.face_detector_path)
    settings = job.settings
    room = env.device_room() if env.device_room else DeviceRoom(env.free_memory(), 0)
    # Pre-flight: the face crop decides the frame size the plan is made for (CPU work, outside the stages).
    reference = prepare_reference(
        job.image, min_resolution=settings.min_resolution, expand_ratio=settings.expand_ratio,
        crop=settings.crop_face, detector=detector,
    )
    inputs = preflight_inputs(reference, settings, job.audio.duration_s, env.device, policy=job.policy,
                              preset=job.preset, time_budget_s=job.time_budget_s,
                              dtype=dtype_name(next(models.unet.parameters()).dtype))
    device_free = free_bytes_by_device(env.device, room.plannable_bytes, settings.device_list, env.free_memory_on)
    decision = plan_on_tightest(inputs, device_free, env)
    plan = decision.plan
    adjustments: list[dict[str, Any]] = []
    rank_plans: list[dict[str, Any]] = []
    compile_notes: list[str] = []
    # compiled UNet artifacts beside the run history unless the host chose a folder
    compile_cache_dir = env.hooks.compile_cache_dir or (env.history.path.parent if env.history is not None else None)

    def on_adjustment(kind: str, details: dict[str, Any]) -> None:
        """Evictions and in-stage downgrades (decode chunk halving): into the report and the editor's toasts;
        a multi-device rank's own plan (`rank_plan.RankPlan.to_plain`): into the report and its notes."""
        if kind == "rank_plan":
            rank_plans.append(details)
            return
        if kind == "unet_compile":  # an opt-in speed lever's outcome: a line in the report, not a downgrade toast
            compile_notes.append(str(details["note"]))
            return
        adjustments.append({"kind": kind, **details})
        logger.info("run adjusted: %s", details.get("lever", kind))
        env.on_event("evicted" if kind == "evicted" else "oom_recovered", {"message": details.get("lever", kind)})

    if plan.downgrades or plan.levers_applied:
        env.on_event("downgraded", {"message": _plan_message(decision), "plan": plan.to_dict()})
    references: dict[int, PreparedReference] = {settings.min_resolution: reference}
    segment_frames = segment_frames_for(job.audio.duration_s, job.segment_seconds)

    def attempt(plan: ExecutionPlan, tracker) -> GenerationResult:
        if plan.min_resolution not in references:
            references.clear()  # keep one reference in memory at a time
            references[plan.min_resolution] = prepare_reference(
                job.image, min_resolution=plan.min_resolution, expand_ratio=settings.expand_ratio,
                crop=settings.crop_face, detector=detector,
            )
        # What runs now (after levers, downgrades and retries): the host retags profiles with it.
        env.on_event("planned", {"width": plan.width, "height": plan.height, "inference_steps": plan.inference_steps})
        run_settings = replace(settings, min_resolution=plan.min_resolution, inference_steps=plan.inference_steps,
                               dynamic_scale=plan.dynamic_scale)
        hooks = replace(env.hooks, observer=tracker, on_adjustment=on_adjustment, compile_cache_dir=compile_cache_dir)
        estimate = decision.estimate if plan == decision.plan else env.estimator.estimate(plan)
        placer = env.placer_for(plan, estimate, on_adjustment) if env.placer_for else None
        _reset_peak(env.device)
        if segment_frames is not None:  # an OOM retry resumes from the segments already finished
            return generate_segmented(
                models, references[plan.min_resolution], job.audio, run_settings, plan, job.output_path,
                device=env.device, hooks=hooks, placer=placer, collect_frames=job.collect_frames,
                job_dir=job.job_dir or job.output_path.with_name(job.output_path.stem + ".segments"),
                segment_frames=segment_frames,
            )
        return generate(
            models, references[plan.min_resolution], job.audio, run_settings, plan, job.output_path,
            device=env.device, hooks=hooks, placer=placer, collect_frames=job.collect_frames,
        )

    def on_retry(retry: OomRetry) -> None:
        env.on_event("oom_recovered", {"message": f"out of memory in {retry.stage}; retrying with "
                                       f"{', '.join(retry.levers) or 'the next rung'}"})

    def next_rung(plan: ExecutionPlan, stage: str) -> ExecutionPlan | None:
        return next_rung_after_oom(plan, ESTIMATOR_STAGE.get(stage, "unet_window"),
                                   image_size=_source_size(reference))

    outcome = run_with_oom_recovery(
        plan, attempt, observer=env.hooks.observer, next_rung=next_rung, is_oom=env.is_oom,
        release_memory=env.release_memory, on_retry=on_retry, max_retries=env.max_retries,
    )
    result = outcome.result
    report = build_report(decision, outcome.plan, outcome.retries, result, room, env.device, job, started,
                          adjustments)
    report["notes"].extend(compile_notes)
    if settings.device_list:
        add_rank_plans(report, device_free, rank_plans)
    if env.history is not None:
        env.history.record(history_entry(report, decision, outcome.plan, env.device))
    return JobOutcome(result=result, report=report)


def history_entry(report: dict[str, Any], decision: PlanDecision, plan: ExecutionPlan, device: torch.device
                  ) -> RunReport:
    frames = max(1, round(report["audio_seconds"] * 12.5))
    windows = -(-frames // 25)
    batches = cfg_call_batches(plan.cfg_batch)
    stage_seconds = dict(report["stage_seconds"])
    stage_seconds["unet"] = stage_seconds.get("sampling", 0.0)
    # The simulation describes the planned run; after an OOM retry the measured run is another plan, so it
    # carries no simulated peak and does not enter the allocator calibration.
    estimate = decision.estimate if plan == decision.plan else None
    peak_stage = estimate.stages[estimate.dominant_stage] if estimate else None
    return RunReport(
        plan=report["plan"], predicted_peak_bytes=report["predicted_peak_bytes"],
        raw_predicted_bytes=estimate.raw_peak_bytes if estimate else 0,
        raw_weight_bytes=peak_stage.weights_bytes if peak_stage else 0,
        measured_peak_bytes=report["measured_peak_bytes"],
        free_before_bytes=report["free_bytes_before"], levers_applied=report["levers_applied"],
        downgrades=report["downgrades"], retries=len(report["retries"]), stage_seconds=stage_seconds,
        hardware={"device": device_label(device)}, unet_calls=windows * plan.inference_steps * len(batches),
        # per call, averaged over the window's calls: the time model is fitted per call
        unet_pixel_frames=plan.width * plan.height * 25 * sum(batches) // len(batches),
        outcome=report["outcome"],
    )


def build_report(
    decision: PlanDecision, final_plan: ExecutionPlan, retries: list[OomRetry], result: GenerationResult,
    room: DeviceRoom, device: torch.device, job: JobRequest, started: float,
    adjustments: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report: every lever the plan chose, every eviction and in-run adjustment, every OOM retry."""
    adjustments = list(adjustments or [])
    measured, measured_tensors = _measured_peaks(device)
    predicted = decision.estimate.peak_bytes
    final_estimate = decision.estimate if final_plan == decision.plan else None
    return {
        "outcome": "success",
        "device": str(device),
        "sampling_devices": list(job.settings.device_list) or [str(device)],  # one worker per entry when several
        "policy": decision.policy,
        "free_bytes_before": room.free_bytes,
        "evictable_bytes_before": room.evictable_bytes,
        "predicted_peak_bytes": final_estimate.peak_bytes if final_estimate else predicted,
        "requested_peak_bytes": decision.requested_peak_bytes,
        "measured_peak_bytes": measured,
        "measured_tensor_peak_bytes": measured_tensors,
        "measured_peak_source": "torch.cuda.max_memory_reserved (what the allocator took from the device)"
        if measured is not None else "not measured: the CPU has no device allocator peak",
        "estimator_relative_error": (measured - predicted) / predicted if measured and predicted else None,
        "dominant_stage": decision.estimate.dominant_stage,
        "calibration": decision.estimate.calibration,
        "levers_applied": [*final_plan.levers_applied, *(a["lever"] for a in adjustments if "lever" in a)],
        "adjustments": adjustments,
        "evictions": [a for a in adjustments if a["kind"] == "evicted"],
        "downgrades": list(final_plan.downgrades),
        "retries": [retry.__dict__ for retry in retries],
        "plan": final_plan.to_dict(),
        "rungs": decision.rungs,
        "stage_seconds": {k: round(v, 4) for k, v in result.stage_seconds.items()},
        "total_seconds": round(time.perf_counter() - started, 3),
        "video": {"path_name": result.video.path.name, "frames": result.video.frames,
                  "fps": float(result.fps), "duration_s": result.video.duration_s},
        "audio_seconds": round(job.audio.duration_s, 3),
        "av_offset_s": result.av_offset_s,
        "notes": [*job.notes, *job.audio.notes, *([room.note()] if room.note() else []), *decision.notes,
                  *result.notes],
    }


def add_rank_plans(report: dict[str, Any], device_free: dict[str, int], rank_plans: list[dict[str, Any]]) -> None:
    """A multi-device run's planning in its report: each device's free bytes, which one set the size, and the
    plan every rank chose for its own device (one note per rank, e.g. "rank 1 (cuda:1): weight streaming on,
    5.10 GiB free"). A long clip's segments each report their ranks' plans: the last one of each rank stays."""
    tightest = tightest_device(device_free)
    latest = {plan["rank"]: plan for plan in rank_plans}
    report["device_free_bytes"] = dict(device_free)
    report["rank_plans"] = [latest[rank] for rank in sorted(latest)]
    report["notes"].append(f"size and steps planned for the tightest device, {tightest} "
                           f"({device_free[tightest] / 2**30:.2f} GiB free); each rank re-planned its own "
                           "memory levers")
    report["notes"].extend(plan["note"] for plan in report["rank_plans"])


def _source_size(reference: PreparedReference) -> tuple[int, int]:
    """The image the resolution applies to: the crop when cropping, else the original."""
    if reference.crop_box is not None:
        x1, y1, x2, y2 = reference.crop_box
        return x2 - x1, y2 - y1
    return reference.size


def _plan_message(decision: PlanDecision) -> str:
    plan = decision.plan
    parts = []
    if plan.levers_applied:
        parts.append("levers: " + ", ".join(plan.levers_applied))
    if plan.downgrades:
        parts.append("downgrades: " + "; ".join(plan.downgrades))
    gib = decision.estimate.peak_bytes / 2**30
    return f"{' | '.join(parts)} (predicted peak {gib:.2f} GiB)"


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _measured_peaks(device: torch.device) -> tuple[int | None, int | None]:
    """(reserved, allocated) peaks since the attempt began. The prediction includes the allocator's overhead, so
    it is compared with the reserved peak; the allocated peak is the simulated tensor peak's counterpart."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_reserved(device)), int(torch.cuda.max_memory_allocated(device))
    return None, None
