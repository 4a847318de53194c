"""GPU calibration and validation of the memory model, on full-size random models and real CUDA.

Peak memory does not depend on weight values, so a random model set in the official layout and at the official
sizes (`sonic_guard.models.full_random`) stands in for the real checkpoints. The results file is one run of this
bench, written whole through bench/results_file.py (command, versions, machine, date, commit) after every phase, so
a run cut off by a time limit keeps what it finished (`complete` says whether every requested phase ran). One
allocator per run: set PYTORCH_CUDA_ALLOC_CONF and give each allocator its own --out. Phases:

  env        torch / CUDA / device; NVML's used memory vs torch.cuda.mem_get_info and the allocator's reserve
  models     write the random full-size set (fp16), load it through the real loader, cast to fp16
  calibrate  memory.calibrate: one UNet window per size, simulated tensor peak vs the least memory it needs
  breakdown  one 1024 px window under variants (attention kernels, cuDNN off, no FF chunking): simulated vs
             measured activations, and the live allocations at the peak grouped by the code that made them
  tightness  a whole 2 s run of a fixed plan (no planner, no recovery) under caps at the prediction, 5 % below
             it and at the simulated tensor peak alone: which of them it finishes under
  validate   whole runs (run_job, policy off: every model resident, 3 CFG branches batched) per size:
             simulated tensor peak vs max_memory_allocated, calibrated prediction vs max_memory_reserved,
             seconds per UNet call
  guard      1024 px under a real per-process cap (torch.cuda.set_per_process_memory_fraction): policy auto must
             plan under the cap and run without an OOM; policy off under a cap too small must hit a real CUDA OOM
             and finish through the recovery ladder
  soak       consecutive small runs: device memory after each, once the models are back on the CPU (must not grow)
  duration   5 s vs 60 s of speech at 512 px, one step: peak VRAM must not grow with the audio

    python bench/bench_gpu.py --audio-dir DIR [--out bench/results/gpu.json] [--phases ...]
    python bench/bench_gpu.py --tiny     # dry run of every phase on the CPU with the small model (no GPU figures;
                                         # written to the temp folder unless --out is given)

Without a CUDA device (and without --tiny) nothing is measured: the results file is still written, with every
figure of its `summary` null and `not_measured_reason` saying why.

DIR holds speech_5s.wav and speech_60s.wav (espeak-ng speech; `--make-audio DIR` writes them where espeak-ng is).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from results_file import write_results  # noqa: E402  (bench/ is on sys.path: run as python bench/bench_gpu.py)

from sonic_guard.inputs.audio_loading import LoadedAudio, audio_from_comfy, fit_duration  # noqa: E402
from sonic_guard.job import JobEnvironment, JobRequest, model_configs_of, run_job  # noqa: E402
from sonic_guard.memory.estimator import MemoryEstimator  # noqa: E402
from sonic_guard.memory.free_memory import device_memory_cap  # noqa: E402
from sonic_guard.memory.history import RunHistory  # noqa: E402
from sonic_guard.models.checkpoints import SonicModelSet, load_sonic_models  # noqa: E402
from sonic_guard.runs.runtime import DevicePlacer  # noqa: E402
from sonic_guard.settings import GenerationSettings  # noqa: E402

logger = logging.getLogger("bench_gpu")
GIB = 1024**3
PHASES = ("env", "models", "calibrate", "breakdown", "tightness", "validate", "guard", "duration", "soak")
SPEECH = ("Hello there. I am a portrait that learned to talk, and this benchmark keeps me talking for a while, "
          "so that we can see whether memory grows with the length of the audio.")
MODEL_SETS = ("stable-video-diffusion-img2vid-xt", "whisper-tiny", "Sonic", "RIFE")
PLACED = ("unet", "audio_token_projector", "motion_bucket_predictor", "whisper_encoder", "vae", "image_encoder",
          "rife")
# The headline figures (what the README's GPU table shows), each null when its phase did not run or failed.
SUMMARY_KEYS = (
    "window_activations_largest_size", "tensor_peak_error_by_size", "least_needed_over_simulated_by_size",
    "run_under_cap", "guard_auto_under_caps", "guard_off_under_smallest_cap", "vram_ratio_60s_vs_5s",
    "seconds_per_unet_call_by_size", "soak_allocated_growth_bytes",
)
SUMMARY_PHASES = {
    "window_activations_largest_size": "breakdown", "tensor_peak_error_by_size": "validate",
    "least_needed_over_simulated_by_size": "calibrate", "run_under_cap": "tightness",
    "guard_auto_under_caps": "guard", "guard_off_under_smallest_cap": "guard", "vram_ratio_60s_vs_5s": "duration",
    "seconds_per_unet_call_by_size": "validate", "soak_allocated_growth_bytes": "soak",
}
NO_CUDA = "no CUDA device was available (torch.cuda.is_available() is False)"


def gib(value: int | float | None) -> float | None:
    return None if value is None else round(value / GIB, 3)


def make_audio(folder: Path) -> None:
    """Real espeak-ng speech repeated to 5 s and 60 s (run where espeak-ng is installed)."""
    from scipy.io import wavfile

    folder.mkdir(parents=True, exist_ok=True)
    once = folder / "once.wav"
    subprocess.run(["espeak-ng", "-w", str(once), SPEECH], check=True, capture_output=True)
    rate, samples = wavfile.read(once)
    for seconds in (5, 60):
        repeats = int(np.ceil(seconds * rate / len(samples)))
        wavfile.write(folder / f"speech_{seconds}s.wav", rate, np.tile(samples, repeats)[: seconds * rate])
    once.unlink()


def load_speech(folder: Path, seconds: float) -> LoadedAudio:
    """`seconds` of the speech: the 5 s file cut to length up to 5 s, else the 60 s one."""
    from scipy.io import wavfile

    rate, samples = wavfile.read(folder / ("speech_5s.wav" if seconds <= 5 else "speech_60s.wav"))
    waveform = torch.from_numpy(samples.astype(np.float32) / 32768.0).reshape(1, 1, -1)
    audio, _ = fit_duration(audio_from_comfy({"waveform": waveform, "sample_rate": int(rate)}), float(seconds))
    return audio


def live_at_peak(snapshot: dict[str, Any], baseline: int, top: int = 30) -> list[dict[str, Any]]:
    """Replay the allocator trace; group what is live at the highest point by the innermost frame in our code,
    diffusers or torch.nn.functional (the code that asked for the memory)."""
    live: dict[int, tuple[int, str]] = {}
    total = best = 0
    best_live: dict[int, tuple[int, str]] = {}
    for event in snapshot["device_traces"][0]:
        action, addr, size = event["action"], event["addr"], event["size"]
        if action == "alloc":
            live[addr] = (size, _site(event.get("frames", [])))
            total += size
            if total > best:
                best, best_live = total, dict(live)
        elif action == "free_completed" and addr in live:
            total -= live.pop(addr)[0]
    groups: dict[str, list[int]] = {}
    for size, site in best_live.values():
        entry = groups.setdefault(site, [0, 0])
        entry[0] += size
        entry[1] += 1
    ranked = sorted(groups.items(), key=lambda item: -item[1][0])[:top]
    return [{"site": site, "gib": gib(size), "tensors": count} for site, (size, count) in ranked] + [
        {"site": "(trace peak above the live weights)", "gib": gib(best), "tensors": len(best_live)}]


def _site(frames: list[dict[str, Any]]) -> str:
    for frame in frames:
        name = frame.get("filename", "")
        if any(part in name for part in ("sonic_guard", "diffusers", "functional.py", "bench_gpu")):
            return f"{Path(name).name}:{frame.get('line')} {frame.get('name')}"
    return "(other)"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device("cpu") if args.tiny else torch.device("cuda", torch.cuda.current_device())
        self.work = Path(tempfile.mkdtemp(prefix="sonic_gpu_bench_"))
        self.history = RunHistory(self.work / "history.sqlite")
        self.models: SonicModelSet | None = None
        self.results: dict[str, Any] = {
            "dry_run_on_cpu": bool(args.tiny), "allocator": allocator(), "phases_requested": list(args.phases),
            "complete": False, "summary": {}, "phases": {},
        }

    # -- helpers --------------------------------------------------------------------------------------------

    def save(self) -> None:
        """The whole file again, from this run only (never merged with an older one)."""
        phases = self.results["phases"]
        self.results["complete"] = all(name in phases and not phases[name].get("partial")
                                       for name in self.args.phases)
        self.results["summary"] = summarize(phases)
        write_results(self.args.out, self.results)

    def ensure_models(self) -> SonicModelSet:
        if self.models is None:
            self.phase_models()
        assert self.models is not None
        return self.models

    def baseline(self) -> None:
        """Every model back on the CPU and the allocator's cache returned: each run starts from the same place."""
        if self.models is not None:
            for name in PLACED:
                module = getattr(self.models, name)
                if module is not None:
                    module.to("cpu")
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def environment(self, cap_bytes: int | None = None) -> JobEnvironment:
        models = self.ensure_models()
        device = self.device

        def free_memory() -> int:
            if device.type != "cuda":
                return cap_bytes or 64 * GIB
            free, _ = torch.cuda.mem_get_info(device)
            # As ComfyUI counts it: the device's free memory plus the allocator's idle cache.
            free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            if cap_bytes is not None:
                free = min(free, cap_bytes - torch.cuda.memory_allocated(device))
            return int(free)

        def release() -> None:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

        estimator = MemoryEstimator(model_configs_of(models), device_type=device.type)
        return JobEnvironment(
            device=device, free_memory=free_memory,
            is_oom=lambda error: isinstance(error, torch.OutOfMemoryError), release_memory=release,
            estimator=estimator, history=self.history,
            placer_for=lambda plan, estimate, adjust: DevicePlacer(
                device, offload_idle=plan.offload_idle_models, stream_unet=plan.unet_weight_offload),
        )

    def job(self, size: int, seconds: float, steps: int, policy: str, cap_bytes: int | None = None) -> dict[str, Any]:
        """One whole run from a clean baseline; returns its report plus the allocator's own peaks."""
        from skimage import data

        models = self.ensure_models()
        self.baseline()
        env = self.environment(cap_bytes)
        settings = GenerationSettings(min_resolution=size, inference_steps=steps, seed=0)
        request = JobRequest(image=data.astronaut(), audio=load_speech(self.args.audio_dir, seconds),
                             settings=settings, output_path=self.work / f"run_{size}_{seconds}_{policy}.mp4",
                             policy=policy)
        started = time.perf_counter()
        try:
            with device_memory_cap(self.device, cap_bytes):
                report = run_job(models, request, env).report
            error = None
        except Exception as exc:  # recorded, not raised: one failed run must not lose the others' figures
            report, error = {}, f"{type(exc).__name__}: {str(exc)[:600]}"
            logger.exception("run %dpx %ds %s failed", size, seconds, policy)
        row: dict[str, Any] = {"size": size, "audio_s": seconds, "steps": steps, "policy": policy,
                               "cap_gib": gib(cap_bytes), "wall_s": round(time.perf_counter() - started, 2)}
        if error:
            row["error"] = error
            return row
        history = self.history.recent(1)[0]
        row.update({
            "plan": {k: report["plan"][k] for k in ("width", "height", "cfg_batch", "ff_chunk", "decode_chunk",
                                                    "offload_idle_models", "unet_weight_offload", "attention",
                                                    "inference_steps", "min_resolution")},
            "levers_applied": report["levers_applied"], "downgrades": report["downgrades"],
            "retries": report["retries"],
            "predicted_tensor_peak_gib": gib(history.raw_predicted_bytes),
            "predicted_peak_gib": gib(report["predicted_peak_bytes"]),
            "measured_allocated_peak_gib": gib(report["measured_tensor_peak_bytes"]),
            "measured_reserved_peak_gib": gib(report["measured_peak_bytes"]),
            "stage_seconds": report["stage_seconds"], "unet_calls": history.unet_calls,
            "video": report["video"], "dominant_stage": report["dominant_stage"],
        })
        if report["measured_tensor_peak_bytes"] and history.raw_predicted_bytes:  # 0 after an OOM retry
            row["tensor_error"] = round(report["measured_tensor_peak_bytes"] / history.raw_predicted_bytes - 1, 4)
            row["reserved_over_prediction"] = round(report["measured_peak_bytes"] / report["predicted_peak_bytes"],
                                                    4)
        sampling = report["stage_seconds"].get("sampling")
        if sampling and history.unet_calls:
            row["seconds_per_unet_call"] = round(sampling / history.unet_calls, 4)
        return row

    def run_phase(self, name: str, body: Callable[[], Any]) -> None:
        started = time.perf_counter()
        logger.info("phase %s", name)
        try:
            value = body()
            entry = {"ok": True, "result": value}
        except Exception as exc:
            logger.exception("phase %s failed", name)
            entry = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        entry["seconds"] = round(time.perf_counter() - started, 1)
        self.results["phases"][name] = entry
        self.save()
        print(json.dumps({name: entry}, default=str)[:4000], flush=True)

    # -- phases ---------------------------------------------------------------------------------------------

    def phase_env(self) -> dict[str, Any]:
        import cv2

        from sonic_guard.telemetry.nvml import read_nvml

        info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                                "cuda": torch.version.cuda, "device": str(self.device), "opencv": cv2.__version__}
        if self.device.type != "cuda":
            return info
        props = torch.cuda.get_device_properties(self.device)
        info.update({"name": props.name, "total_gib": gib(props.total_memory),
                     "multiprocessors": props.multi_processor_count})
        block = torch.empty(2 * GIB, dtype=torch.uint8, device=self.device)  # a known 2 GiB live
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info(self.device)
        reading = read_nvml(with_processes=True)
        nvml = reading.devices[0] if reading.devices else None
        info["readings_with_2gib_live"] = {
            "torch_mem_get_info_used_gib": gib(total - free),
            "torch_reserved_gib": gib(torch.cuda.memory_reserved(self.device)),
            "nvml_used_gib": gib(nvml.memory_used_bytes) if nvml else None,
            "nvml_total_gib": gib(nvml.memory_total_bytes) if nvml else None,
            "nvml_process_used_gib": gib(nvml.process_used_bytes) if nvml else None,
            "nvml_error": getattr(reading, "error", None),
        }
        info["context_and_driver_gib"] = gib(total - free - torch.cuda.memory_reserved(self.device))
        del block
        torch.cuda.empty_cache()
        return info

    def phase_models(self) -> dict[str, Any]:
        started = time.perf_counter()
        if self.args.tiny:
            from sonic_guard.models.tiny import write_tiny_model_set

            root = self.work / "tiny-sonic"
            write_tiny_model_set(root, seed=0)
        else:
            from sonic_guard.models.full_random import write_full_size_random_model_set

            root = self.args.models_dir
            write_full_size_random_model_set(root, build_device=self.device)
        written = time.perf_counter() - started
        started = time.perf_counter()
        dtype = torch.float32 if self.args.tiny else torch.float16
        models = load_sonic_models(root, dtype=dtype)
        self.models = models
        on_disk = sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())
        params = sum(p.numel() for p in models.unet.parameters())
        return {"root": str(root), "write_s": round(written, 1), "load_s": round(time.perf_counter() - started, 1),
                "on_disk_gib": gib(on_disk), "unet_parameters": params, "dtype": str(dtype)}

    def phase_calibrate(self) -> dict[str, Any]:
        from sonic_guard.memory.allocator_calibration import calibrate_on_device

        if self.device.type != "cuda":
            return {"skipped": "allocator calibration needs CUDA"}
        self.baseline()
        sizes = tuple(self.args.sizes)
        calibration = calibrate_on_device(self.history, sizes=sizes)
        rows = [r for r in self.history.recent(len(sizes)) if r.outcome == "calibration"][::-1]
        return {
            "fit": {"fixed_gib": gib(calibration.fixed_bytes), "fragmentation": round(calibration.fragmentation, 4),
                    "source": calibration.source},
            "allocator": rows[0].hardware.get("allocator") if rows else None,
            "windows": [{"size": r.plan["width"], "simulated_gib": gib(r.raw_predicted_bytes),
                         "least_needed_gib": gib(r.measured_peak_bytes),
                         "ratio": round(r.measured_peak_bytes / r.raw_predicted_bytes, 4)
                         if r.measured_peak_bytes else None} for r in rows],
        }

    def phase_breakdown(self) -> dict[str, Any]:
        from sonic_guard.memory.allocator_calibration import run_window, unet_on_device
        from sonic_guard.memory.plan import ExecutionPlan
        from sonic_guard.models.configs import ModelConfigs

        if self.device.type != "cuda":
            return {"skipped": "needs CUDA"}
        self.baseline()
        configs = ModelConfigs.full_size()
        estimator = MemoryEstimator(configs, device_type="cuda")
        size = max(self.args.sizes)
        unet = unet_on_device(configs, self.device, torch.float16)
        torch.cuda.synchronize()
        weights = torch.cuda.memory_allocated(self.device)
        variants = {
            "flash_ff4": {"attention": "flash", "ff_chunk": 4},
            "mem_efficient_ff4": {"attention": "mem_efficient", "ff_chunk": 4},
            "math_ff4": {"attention": "math", "ff_chunk": 4},
            "flash_no_ff_chunk": {"attention": "flash", "ff_chunk": None},
            "flash_ff4_cudnn_off": {"attention": "flash", "ff_chunk": 4, "cudnn": False},
        }
        rows: dict[str, Any] = {"weights_gib": gib(weights)}
        for name, variant in variants.items():
            plan = ExecutionPlan(min_resolution=size, width=size, height=size, cfg_batch=1,
                                 ff_chunk=variant["ff_chunk"], attention=variant["attention"],
                                 offload_idle_models=True)
            simulated = estimator.estimate(plan, exact=True).stages["unet_window"].activation_bytes
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            record = name == "flash_ff4"
            if record:
                torch.cuda.memory._record_memory_history(max_entries=400_000)
            try:
                with torch.backends.cudnn.flags(enabled=variant.get("cudnn", True)):
                    run_window(plan, configs, self.device, unet)
                rows[name] = {
                    "simulated_activation_gib": gib(simulated),
                    "measured_activation_gib": gib(torch.cuda.max_memory_allocated(self.device) - weights),
                    "reserved_peak_gib": gib(torch.cuda.max_memory_reserved(self.device)),
                }
                if record:
                    rows[name]["live_at_peak"] = live_at_peak(torch.cuda.memory._snapshot(), weights)
            except Exception as exc:
                rows[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            finally:
                if record:
                    torch.cuda.memory._record_memory_history(enabled=None)
        del unet
        return rows

    def phase_tightness(self) -> list[dict[str, Any]]:
        from skimage import data

        from sonic_guard.conditioning.reference_image import prepare_reference
        from sonic_guard.face import make_face_detector
        from sonic_guard.memory.plan import ExecutionPlan
        from sonic_guard.runs.pipeline import generate

        models = self.ensure_models()
        estimator = MemoryEstimator(model_configs_of(models), device_type=self.device.type)
        audio, _ = fit_duration(load_speech(self.args.audio_dir, 5), 2.0)
        cases = (("levers", max(self.args.sizes), {"offload_idle_models": True, "ff_chunk": 4, "cfg_batch": 1,
                                                   "decode_chunk": 2}),
                 ("official", min(self.args.sizes), {}))
        rows = []
        for name, size, levers in cases:
            reference = prepare_reference(data.astronaut(), min_resolution=size,
                                          detector=make_face_detector(None))
            height, width = reference.reference.shape[-2:]
            plan = ExecutionPlan(min_resolution=size, width=width, height=height, inference_steps=1,
                                 dtype="float16" if self.device.type == "cuda" else "float32", **levers)
            estimate = estimator.estimate(plan, exact=True)
            caps = {"prediction": estimate.peak_bytes, "prediction_minus_5pct": int(estimate.peak_bytes * 0.95),
                    "tensor_peak": estimate.raw_peak_bytes}
            for label, cap in caps.items():
                self.baseline()
                settings = GenerationSettings(min_resolution=size, inference_steps=1, seed=0)
                placer = DevicePlacer(self.device, offload_idle=plan.offload_idle_models)
                row: dict[str, Any] = {"plan": name, "size": size, "cap": label, "cap_gib": gib(cap),
                                       "predicted_gib": gib(estimate.peak_bytes),
                                       "tensor_peak_gib": gib(estimate.raw_peak_bytes)}
                try:
                    with device_memory_cap(self.device, cap):
                        generate(models, reference, audio, settings, plan,
                                 self.work / f"tight_{name}_{label}.mp4", device=self.device, placer=placer)
                    row["finished"] = True
                except torch.OutOfMemoryError as exc:
                    row["finished"] = False
                    row["oom"] = str(exc)[:200]
                if self.device.type == "cuda":
                    row["allocated_peak_gib"] = gib(torch.cuda.max_memory_allocated(self.device))
                    row["reserved_peak_gib"] = gib(torch.cuda.max_memory_reserved(self.device))
                rows.append(row)
                logger.info("tightness %s", row)
        return rows

    def phase_validate(self) -> list[dict[str, Any]]:
        return [self.job(size, 5, self.args.steps, "off") for size in self.args.sizes]

    def phase_guard(self) -> list[dict[str, Any]]:
        size = max(self.args.sizes)
        rows = [self.job(size, 5, self.args.steps, "auto", int(cap * GIB)) for cap in self.args.caps]
        rows.append(self.job(size, 5, self.args.steps, "off", int(min(self.args.caps) * GIB)))
        return rows

    def phase_soak(self) -> dict[str, Any]:
        size = min(self.args.sizes)
        readings = []
        for index in range(self.args.soak_runs):
            row = self.job(size, self.args.soak_seconds, 1, "auto")
            self.baseline()
            reading = {"run": index, "ok": "error" not in row, "wall_s": row["wall_s"]}
            if self.device.type == "cuda":
                free, total = torch.cuda.mem_get_info(self.device)
                reading.update({"allocated_bytes": torch.cuda.memory_allocated(self.device),
                                "reserved_bytes": torch.cuda.memory_reserved(self.device),
                                "device_used_bytes": total - free})
            readings.append(reading)
            self.results["phases"]["soak"] = {"ok": True, "partial": True, "result": {"readings": readings}}
            self.save()  # a run cut off by a time limit keeps the readings so far
        out: dict[str, Any] = {"runs": len(readings), "all_ok": all(r["ok"] for r in readings),
                               "readings": readings}
        if self.device.type == "cuda" and readings:
            first, last = readings[0], readings[-1]
            out["allocated_growth_bytes"] = last["allocated_bytes"] - first["allocated_bytes"]
            out["device_used_growth_bytes"] = last["device_used_bytes"] - first["device_used_bytes"]
        return out

    def phase_duration(self) -> dict[str, Any]:
        size = min(self.args.sizes) if self.args.tiny else 512
        short, long = (self.job(size, seconds, 1, "auto") for seconds in (5, 60))
        out: dict[str, Any] = {"5s": short, "60s": long}
        if short.get("measured_allocated_peak_gib") and long.get("measured_allocated_peak_gib"):
            out["vram_allocated_ratio_60s_vs_5s"] = round(
                long["measured_allocated_peak_gib"] / short["measured_allocated_peak_gib"], 4)
            out["vram_reserved_ratio_60s_vs_5s"] = round(
                long["measured_reserved_peak_gib"] / short["measured_reserved_peak_gib"], 4)
        return out


def allocator() -> str:
    return os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or "native"


def summarize(phases: dict[str, Any]) -> dict[str, Any]:
    """The headline figures from the phases that ran; `not_measured` gives the reason for each null one."""

    def result(name: str) -> Any:
        entry = phases.get(name)
        if not entry or not entry.get("ok") or entry.get("partial"):
            return None
        value = entry["result"]
        return None if isinstance(value, dict) and "skipped" in value else value

    def by_size(rows: list[dict[str, Any]] | None, key: str) -> dict[str, Any] | None:
        return {str(row["size"]): row.get(key) for row in rows} if rows else None

    summary: dict[str, Any] = dict.fromkeys(SUMMARY_KEYS)
    window = (result("breakdown") or {}).get("flash_ff4")
    if window and "error" not in window:
        simulated, measured = window["simulated_activation_gib"], window["measured_activation_gib"]
        summary["window_activations_largest_size"] = {
            "simulated_gib": simulated, "measured_gib": measured,
            "relative_error": round(measured / simulated - 1, 4) if simulated else None}
    validate = result("validate")
    summary["tensor_peak_error_by_size"] = by_size(validate, "tensor_error")
    summary["seconds_per_unet_call_by_size"] = by_size(validate, "seconds_per_unet_call")
    calibration = result("calibrate")
    if calibration and calibration.get("windows"):
        summary["least_needed_over_simulated_by_size"] = {
            "allocator": calibration.get("allocator"), **by_size(calibration["windows"], "ratio")}
    tightness = result("tightness")
    if tightness:
        summary["run_under_cap"] = [{k: row.get(k) for k in ("plan", "size", "cap", "cap_gib", "finished")}
                                    for row in tightness]
    guard = result("guard")
    if guard:
        def outcome(row: dict[str, Any]) -> dict[str, Any]:
            return {"cap_gib": row.get("cap_gib"), "policy": row.get("policy"), "finished": "error" not in row,
                    "levers_applied": row.get("levers_applied"), "downgrades": row.get("downgrades"),
                    "retries": row.get("retries"), "error": row.get("error")}

        summary["guard_auto_under_caps"] = [outcome(row) for row in guard if row.get("policy") == "auto"]
        off = [row for row in guard if row.get("policy") == "off"]
        summary["guard_off_under_smallest_cap"] = outcome(off[-1]) if off else None
    duration = result("duration")
    if duration and duration.get("vram_allocated_ratio_60s_vs_5s") is not None:
        summary["vram_ratio_60s_vs_5s"] = {"allocated": duration["vram_allocated_ratio_60s_vs_5s"],
                                           "reserved": duration["vram_reserved_ratio_60s_vs_5s"]}
    soak = result("soak")
    if soak:
        summary["soak_allocated_growth_bytes"] = soak.get("allocated_growth_bytes")
    not_measured = {}
    for key in SUMMARY_KEYS:
        if summary[key] is None:
            phase = SUMMARY_PHASES[key]
            entry = phases.get(phase)
            if entry is None:
                not_measured[key] = f"phase {phase} did not run"
            elif not entry.get("ok"):
                not_measured[key] = f"phase {phase} failed: {entry.get('error')}"
            elif entry.get("partial"):
                not_measured[key] = f"phase {phase} was cut off before it finished"
            else:
                skipped = entry["result"].get("skipped") if isinstance(entry["result"], dict) else None
                not_measured[key] = f"phase {phase}: {skipped or 'no GPU figure (no CUDA device in this run)'}"
    summary["not_measured"] = not_measured
    return summary


def not_measured_results(args: argparse.Namespace, reason: str) -> dict[str, Any]:
    """What a run without a CUDA device writes: the same summary, every figure null, and why."""
    summary: dict[str, Any] = dict.fromkeys(SUMMARY_KEYS)
    summary["not_measured"] = dict.fromkeys(SUMMARY_KEYS, reason)
    return {"dry_run_on_cpu": False, "allocator": allocator(), "phases_requested": list(args.phases),
            "complete": False, "not_measured_reason": reason, "summary": summary, "phases": {}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 768, 1024])
    parser.add_argument("--caps", type=float, nargs="+", default=[12.0, 8.0], help="GiB caps for the guard phase")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--soak-runs", type=int, default=10)
    parser.add_argument("--soak-seconds", type=float, default=5.0, help="seconds of speech per soak run")
    parser.add_argument("--audio-dir", type=Path, default=REPO / ".gpu")
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "sonic-full-random")
    parser.add_argument("--out", type=Path, help="results file (default bench/results/gpu.json; with --tiny, "
                                                 "sonic_gpu_bench_tiny.json in the temp folder)")
    parser.add_argument("--tiny", action="store_true", help="dry run on the CPU with the small model")
    parser.add_argument("--make-audio", type=Path, help="write speech_5s.wav and speech_60s.wav here and exit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.make_audio:
        make_audio(args.make_audio)
        return 0
    if args.out is None:
        args.out = (Path(tempfile.gettempdir()) / "sonic_gpu_bench_tiny.json" if args.tiny
                    else REPO / "bench" / "results" / "gpu.json")
    if not args.tiny and not torch.cuda.is_available():
        write_results(args.out, not_measured_results(args, NO_CUDA))
        logger.warning("nothing measured: %s; wrote %s with every figure null", NO_CUDA, args.out)
        return 0
    if args.tiny:
        args.sizes = [128] if args.sizes == [512, 768, 1024] else args.sizes
        args.steps = 1
    bench = Bench(args)
    for name in args.phases:
        bench.run_phase(name, getattr(bench, f"phase_{name}"))
    return 0 if all(entry["ok"] for entry in bench.results["phases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
