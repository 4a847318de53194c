"""Peak host RAM (and, with CUDA, peak VRAM) of one generation for 5 s vs 60 s of speech, small model.

Each duration runs `pipeline.generate` end to end (features, sampler windows, decode, interpolation, mp4 with
the audio) in its own subprocess, so each peak is that run's alone. Host peak: the child's ru_maxrss (the
high-water mark of its resident set, imports and model loading included), plus psutil polling of the RSS
during `generate` alone. Device peak: torch.cuda.max_memory_allocated around `generate`. Target: the 60 s / 5 s
host RAM ratio <= 1.2 (memory must not grow with the audio's length).

    .venv/bin/python bench/bench_memory_vs_duration.py [--seconds 5 60] [--steps 1] [--resolution 128]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from results_file import write_results  # bench/ is on sys.path: run as python bench/bench_memory_vs_duration.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "memory_vs_duration.json"
SPEECH = ("Hello there. I am a portrait that learned to talk, and this benchmark keeps me talking for a while, "
          "so that we can see whether memory grows with the length of the audio.")


def speech_wav(path: Path, seconds: float) -> Path:
    """Real espeak-ng speech, repeated until it lasts `seconds`."""
    from scipy.io import wavfile

    once = path.with_suffix(".once.wav")
    subprocess.run(["espeak-ng", "-w", str(once), SPEECH], check=True, capture_output=True)
    rate, samples = wavfile.read(once)
    repeats = int(np.ceil(seconds * rate / len(samples)))
    wavfile.write(path, rate, np.tile(samples, repeats)[: int(seconds * rate)])
    return path


class RssPoller:
    """Highest RSS seen while running, sampled every 20 ms (catches peaks inside `generate` alone)."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> RssPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def child(args: argparse.Namespace) -> dict:
    import torch
    from skimage import data

    from sonic_guard.conditioning.reference_image import prepare_reference
    from sonic_guard.face import make_face_detector
    from sonic_guard.inputs.audio_loading import fit_duration, load_audio_file
    from sonic_guard.memory.plan import ExecutionPlan
    from sonic_guard.models.checkpoints import load_sonic_models
    from sonic_guard.runs.pipeline import generate
    from sonic_guard.settings import GenerationSettings

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(args.work)
    models = load_sonic_models(Path(args.models), with_rife=args.interpolation == "rife")
    audio, _ = fit_duration(load_audio_file(speech_wav(work / f"speech_{args.child:g}.wav", args.child)), args.child)
    reference = prepare_reference(data.astronaut(), min_resolution=args.resolution, expand_ratio=0.5, crop=True,
                                  detector=make_face_detector(models.face_detector_path))
    height, width = reference.reference.shape[-2:]
    settings = GenerationSettings(min_resolution=args.resolution, inference_steps=args.steps,
                                  interpolation=args.interpolation, interpolation_fallback="blend")
    plan = ExecutionPlan(min_resolution=args.resolution, width=width, height=height, inference_steps=args.steps,
                         dtype="float16" if device.type == "cuda" else "float32")
    if device.type == "cuda":
        models.unet.half()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = RssPoller().peak
    started = time.perf_counter()
    with RssPoller() as poller:
        result = generate(models, reference, audio, settings, plan, work / f"out_{args.child:g}.mp4", device=device)
    return {
        "audio_seconds": round(audio.duration_s, 3),
        "video_frames": result.video.frames,
        "video_seconds": result.video.duration_s,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
        "rss_before_generate_bytes": rss_before,
        "peak_rss_during_generate_bytes": poller.peak,
        "peak_vram_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "stage_seconds": {k: round(v, 2) for k, v in result.stage_seconds.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, nargs=2, default=[5.0, 60.0], metavar=("SHORT", "LONG"))
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--interpolation", default="blend", choices=["rife", "blend", "none"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args)))
        return 0

    from sonic_guard.models.tiny import write_tiny_model_set

    with tempfile.TemporaryDirectory(prefix="sonic_mem_bench_") as work:
        models = Path(work) / "tiny-sonic"
        write_tiny_model_set(models, seed=0)
        runs = {}
        for seconds in args.seconds:
            child_cmd = [sys.executable, __file__, "--child", str(seconds), "--models", str(models), "--work", work,
                         "--steps", str(args.steps), "--resolution", str(args.resolution),
                         "--interpolation", args.interpolation, "--threads", str(args.threads)]
            done = subprocess.run(child_cmd, check=True, capture_output=True, text=True)
            runs[f"{seconds:g}s"] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{seconds:g} s: {json.dumps(runs[f'{seconds:g}s'])}", flush=True)
    short, long = (runs[f"{s:g}s"] for s in args.seconds)
    label = f"{args.seconds[1]:g}s_vs_{args.seconds[0]:g}s"
    summary = {
        f"host_ram_ratio_{label}": round(long["peak_rss_bytes"] / short["peak_rss_bytes"], 4),
        f"host_ram_during_generate_ratio_{label}": round(
            long["peak_rss_during_generate_bytes"] / short["peak_rss_during_generate_bytes"], 4),
    }
    if short["peak_vram_bytes"] and long["peak_vram_bytes"]:
        summary[f"vram_ratio_{label}"] = round(long["peak_vram_bytes"] / short["peak_vram_bytes"], 4)
    else:
        summary[f"vram_ratio_{label}"] = None
        summary["vram_not_measured_reason"] = "no CUDA device was available where this ran"
    report = {
        **summary,
        "target": {"host_ram_ratio_max": 1.2},
        "runs": runs,
        "settings": {"model": "small random model (sonic_guard.models.tiny), official layout",
                     "path": "sonic_guard.runs.pipeline.generate (one clip, not segmented)",
                     "resolution": args.resolution, "steps": args.steps, "interpolation": args.interpolation,
                     "torch_threads": args.threads},
    }
    write_results(args.out, report)
    for key, value in summary.items():
        print(f"{key}: {value}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
