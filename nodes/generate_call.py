"""Glue between the generator node and the core job: ComfyUI's device, free memory, OOM type, progress, cancel,
model management, telemetry and editor events go in; the video, frames and report come out."""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from comfy_api.v0_0_2 import InputImpl, io

from ..sonic_guard.errors import SonicGuardError
from ..sonic_guard.inputs.audio_loading import audio_from_comfy, fit_duration
from ..sonic_guard.job import JobEnvironment, JobRequest, run_job
from ..sonic_guard.runs.runtime import RunHooks
from ..sonic_guard.runs.segments import job_fingerprint, tensor_sha256
from ..sonic_guard.settings import GenerationSettings
from ..sonic_guard.telemetry.tags import plan_tags, run_tags
from . import comfy_bridge
from .model_handle import SonicModelHandle
from .planning import estimator_for
from .services import notify, services

logger = logging.getLogger(__name__)


def settings_from_widgets(widgets: dict[str, Any]) -> GenerationSettings:
    return GenerationSettings(
        duration=float(widgets["duration"]), min_resolution=int(widgets["min_resolution"]),
        expand_ratio=float(widgets["expand_ratio"]), crop_face=bool(widgets["crop_face"]),
        inference_steps=int(widgets["inference_steps"]), dynamic_scale=float(widgets["dynamic_scale"]),
        motion_scale=float(widgets["motion_scale"]), seed=int(widgets["seed"]),
        lip_sync_correction=bool(widgets["lip_sync_correction"]), smooth_motion=float(widgets["smooth_motion"]),
        interpolation=str(widgets["interpolation"]), interpolation_fallback=str(widgets["rife_fallback"]),
        devices=str(widgets.get("devices") or ""), compile_unet=bool(widgets.get("compile_unet", False)),
    )


def run_generate_node(node_cls: type, handle: SonicModelHandle, image: torch.Tensor, audio: dict,
                      widgets: dict[str, Any]) -> io.NodeOutput:
    telemetry = services().telemetry
    observer = None
    try:
        settings = settings_from_widgets(widgets)
        loaded, duration_note = fit_duration(audio_from_comfy(audio), settings.duration or None)
        tags = run_tags(duration_s=loaded.duration_s, width=settings.min_resolution,
                        height=settings.min_resolution, inference_steps=settings.inference_steps,
                        user_tags=handle.profiling.user_tags if handle.profiling else None)
        observer = telemetry.run(tags, profile=handle.profiling is not None)
        output_path, file_name, subfolder = comfy_bridge.output_path_for(str(widgets["filename_prefix"]))
        bar = comfy_bridge.progress_bar(1)
        hooks = RunHooks(progress=lambda done, total: bar.update_absolute(done, total),
                         check_cancel=comfy_bridge.check_interrupt, observer=observer)
        env = JobEnvironment(
            device=handle.device,
            free_memory=lambda: comfy_bridge.guard_free_bytes(handle.device),
            device_room=lambda: comfy_bridge.room_on(handle.device),
            is_oom=comfy_bridge.is_oom,
            release_memory=lambda: comfy_bridge.release_memory(handle.device),
            estimator=estimator_for(handle),
            placer_for=lambda plan, estimate, adjust: comfy_bridge.ComfyModelPlacer(
                handle.patchers, estimate, offload_idle=plan.offload_idle_models,
                stream_unet=plan.unet_weight_offload,
                on_evicted=lambda eviction: adjust("evicted", {"lever": eviction.lever, **eviction.to_dict()}),
            ),
            hooks=hooks,
            on_event=lambda event, data: _on_event(observer, event, data),
            history=services().history,
        )
        job = JobRequest(
            image=image, audio=loaded, settings=settings, output_path=output_path,
            policy=str(widgets["memory_policy"]), preset=str(widgets["preset"]),
            time_budget_s=float(widgets["time_budget_s"]) or None,
            collect_frames=bool(widgets["output_frames"]), notes=[duration_note, *handle.notes],
            segment_seconds=float(widgets.get("segment_seconds", 0.0)),
            job_dir=comfy_bridge.output_directory() / "sonic_guard_jobs" / _job_key(image, audio, widgets),
        )
        outcome = run_job(handle.models, job, env)
    except BaseException as error:
        # Cancels (ComfyUI's interrupt is a BaseException) and bad inputs are counted too, by reason.
        (observer or telemetry.run({}, profile=False)).finish({}, error=error)
        if isinstance(error, SonicGuardError) and error.reason == "will_not_fit":
            notify("refused", {"message": str(error)})
        raise
    report = observer.finish(outcome.report)
    result = outcome.result
    frames = result.frames if result.frames is not None else _first_frame(result)
    audio_out = {"waveform": torch.from_numpy(loaded.original_waveform).float().unsqueeze(0),
                 "sample_rate": loaded.original_sample_rate}
    report_json = json.dumps(report, indent=1, default=str)
    saved = {"filename": file_name, "subfolder": subfolder, "type": "output"}
    return io.NodeOutput(
        InputImpl.VideoFromFile(str(output_path)), frames, audio_out, float(result.fps), report_json,
        ui={"images": [saved], "animated": (True,), "text": (summary_line(report), report_json)},
    )


def _on_event(observer, event: str, data: dict) -> None:
    """The planned size retags the run's profiles; the other events go to the editor (toasts)."""
    if event == "planned":
        observer.retag(plan_tags(data["width"], data["height"], data["inference_steps"]))
    else:
        notify(event, data)


def summary_line(report: dict[str, Any]) -> str:
    """One human line first in the node's text: nothing about the plan is silent."""
    gib = 2**30
    parts = [f"predicted peak {report['predicted_peak_bytes'] / gib:.2f} GiB"]
    if report.get("measured_peak_bytes"):
        parts.append(f"measured {report['measured_peak_bytes'] / gib:.2f} GiB")
    parts.append(f"free before {report['free_bytes_before'] / gib:.1f} GiB")
    parts.append("levers: " + (", ".join(report["levers_applied"]) or "none"))
    parts.append("downgrades: " + ("; ".join(report["downgrades"]) or "none"))
    parts.append(f"OOM retries: {len(report['retries'])}")
    parts.append(f"{report['total_seconds']:.1f} s")
    return "Sonic Guard | " + " | ".join(parts)


def _job_key(image: torch.Tensor, audio: dict, widgets: dict[str, Any]) -> str:
    """The same inputs and widgets give the same job folder, so a rerun resumes from finished segments."""
    # compile_unet changes speed, not frames: left out, so job folders keep the keys they had before it existed
    frame_widgets = {k: v for k, v in widgets.items() if k not in ("filename_prefix", "output_frames", "compile_unet")}
    inputs = {"image": tensor_sha256(image), "audio": tensor_sha256(audio["waveform"]),
              "rate": str(audio["sample_rate"])}
    return job_fingerprint(inputs, frame_widgets)[:24]


def _first_frame(result) -> torch.Tensor:
    """IMAGE output when frames were not requested: the first frame of the video, read back from the file."""
    import av

    with av.open(str(result.video.path)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    return torch.from_numpy(frame).float().div(255.0).unsqueeze(0)
