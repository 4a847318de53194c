"""Speed side by side with the official Sonic pipeline: same random weights, same inputs, same device, same settings.

Both pipelines run on one model set in the official layout (full size from `sonic_guard.models.full_random` on a
GPU; the small set from `sonic_guard.models.tiny` on the CPU), on the official examples (a real portrait and a
real 10 s speech clip, read from ../shared/reference/sonic-official/examples), with the official settings
(25 steps, 3 guidance branches, decode chunk 8, RIFE to 25 fps) and the same initial noise. The official code is
imported at run time (bench/speed_official.py says which shims it needs and why); when it is absent only the
official side is skipped and every comparison figure says so.

Per side and resolution: seconds per UNet window call, the call's FLOPs (torch.utils.flop_counter on a real call)
and achieved TFLOPS as a fraction of the GPU's dense fp16/bf16 peak, seconds per stage, end-to-end seconds per
second of video, peak memory (torch.cuda.max_memory_allocated; on the CPU the process RSS peak), and the max
abs/rel difference of the two pipelines' final latents (what each hands to the VAE decoder), next to our own fp32
noise (ours with the memory levers vs without: the same maths through other kernels).

    python bench/bench_speed.py                      # GPU: 512 and 768 px, 25 steps, full-size random weights
    python bench/bench_speed.py --cpu                # CPU: small model, 128 px, 2 steps, the first 2 s of the clip,
                                                     # one thread, each side twice (the fastest kept)

Without a CUDA device the CPU path runs (also when not asked for); figures that only mean something on a GPU are
null with the reason in `not_measured`. Results: bench/results/speed.json (--out to write elsewhere).
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from results_file import write_results  # noqa: E402  (bench/ is on sys.path)
from speed_measure import (  # noqa: E402
    DecodeInputs,
    PeakMemory,
    UnetCalls,
    attention_kernels,
    dense_fp16_peak_tflops,
    difference,
)
from speed_official import (  # noqa: E402
    StageTimer,
    build_official,
    official_import_path,
    official_missing_reason,
    official_root,
    official_stage_seconds,
    timed_official_stages,
)

from sonic_guard.conditioning.reference_image import prepare_reference  # noqa: E402
from sonic_guard.face import make_face_detector  # noqa: E402
from sonic_guard.inputs.audio_loading import load_audio_file  # noqa: E402
from sonic_guard.memory.plan import ExecutionPlan, frame_size  # noqa: E402
from sonic_guard.models.checkpoints import SonicModelSet, load_sonic_models  # noqa: E402
from sonic_guard.runs.pipeline import WINDOW_FRAMES, generate  # noqa: E402
from sonic_guard.runs.runtime import DevicePlacer  # noqa: E402
from sonic_guard.sampling.sampler import initial_noise  # noqa: E402
from sonic_guard.settings import GenerationSettings  # noqa: E402

logger = logging.getLogger("bench_speed")

EXAMPLES = REPO.parent / "shared" / "reference" / "sonic-official" / "examples"
IMAGE = "image/leonnado.jpg"  # a real photo every detector finds a face in
SPEECH = "wav/talk_male_law_10s.wav"  # real speech, 10 s
DEFAULT_OUT = REPO / "bench" / "results" / "speed.json"
SEED = 1
NO_GPU = "CPU path (no CUDA device, or --cpu): the small model, so no GPU figures"
# Headline keys (the README table); each null one has its reason in `not_measured`.
HEADLINE_KEYS = ("unet_fraction_of_peak", "speedup_vs_official", "levers_time_ratio", "wall_over_critical_path")


@dataclass(frozen=True)
class BenchConfig:
    device: torch.device
    sizes: tuple[int, ...]
    steps: int
    seconds: float  # of the speech clip used (the whole 10 s by default)
    levers_sizes: tuple[int, ...]
    repeats: int  # runs per side; the fastest is kept
    model_root: Path
    work: Path

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.device.type == "cuda" else torch.float32


def example_inputs(work: Path, seconds: float) -> tuple[Path, Path]:
    """The official example portrait and speech; a shorter clip (the CPU path asks for one) is its first
    `seconds`, written once as wav into the work folder so both pipelines read the same file."""
    image, speech = EXAMPLES / IMAGE, EXAMPLES / SPEECH
    for path in (image, speech):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the bench reads the official examples from "
                                    "../shared/reference/sonic-official/examples beside the repository")
    audio = load_audio_file(speech, max_duration_s=None)
    if seconds >= audio.duration_s:
        return image, speech
    from scipy.io import wavfile

    short = work / f"speech_{seconds:g}s.wav"
    wavfile.write(short, 16000, audio.waveform[: int(round(seconds * 16000))].astype(np.float32))
    return image, short


def unit_noise(frames: int, height: int, width: int) -> torch.Tensor:
    """The initial unit noise our sampler draws for this seed (the official side is handed the same)."""
    return initial_noise(torch.empty(4, height, width), frames, SEED)


def windows_of(frames: int, steps: int) -> int:
    return -(-frames // WINDOW_FRAMES) * steps


def unet_figures(calls: UnetCalls, windows: int, flops: int | None, peak: float | None) -> dict[str, Any]:
    row = calls.summary(windows)
    if flops is None or not calls.seconds:
        return row
    # FLOPs of one window (3 branches in one call, or summed over 3 one-branch calls).
    window_flops = flops * (3 // max(1, calls.batches[0])) if calls.batches else flops
    seconds = row["seconds_per_unet_window"]
    tflops = window_flops / seconds / 1e12 if seconds else None
    row.update({"flops_per_window": window_flops, "achieved_tflops": round(tflops, 4) if tflops else None,
                "fraction_of_dense_fp16_peak": round(tflops / peak, 4) if tflops and peak else None})
    return row


def side_row(seconds: float, video_seconds: float, stages: dict[str, float], unet: dict[str, Any],
             memory: dict[str, Any], frames: int) -> dict[str, Any]:
    return {"end_to_end_s": round(seconds, 3),
            "seconds_per_second_of_video": round(seconds / video_seconds, 4) if video_seconds else None,
            "stage_seconds": stages, "unet": unet, "peak_memory": memory, "generated_frames": frames}


def run_official(cfg: BenchConfig, size: int, image: Path, speech: Path, video_seconds: float
                 ) -> tuple[dict[str, Any], torch.Tensor]:
    peak, _ = dense_fp16_peak_tflops(cfg.device)
    clock = StageTimer(cfg.device)
    with official_import_path(official_root()) as sonic:
        official = build_official(sonic, cfg.model_root, cfg.device, cfg.dtype, clock, unit_noise)
        baseline(cfg.device)
        memory = PeakMemory(cfg.device)
        with (timed_official_stages(sonic, clock), DecodeInputs(official.pipe.pipe.vae) as decoded,
              UnetCalls(official.pipe.pipe.unet, cfg.device) as calls, memory.measure()):
            started = time.perf_counter()
            status = official.process(str(image), str(speech), str(cfg.work / f"official_{size}.mp4"),
                                      min_resolution=size, inference_steps=cfg.steps, seed=SEED)
            seconds = time.perf_counter() - started
        if status != 0:
            raise RuntimeError(f"the official Sonic.process returned {status} (no face found?)")
        latents = decoded.latents()
        flops = calls.count_flops()
        stages = official_stage_seconds(clock.seconds)
        row = side_row(seconds, video_seconds, stages,
                       unet_figures(calls, windows_of(len(latents), cfg.steps), flops, peak), memory.report(),
                       len(latents))
        row["stage_note"] = ("official stages: preprocess = image_audio_to_tensor (face box, resize, CLIP pixels, "
                             "mel features); audio_features = whisper + audio adapters in test(); sampling = the "
                             "pipe call without decode (reference CLIP/VAE encodes + denoising); encode = "
                             "save_videos_grid + the ffmpeg mux")
        row["mux_ok"] = (cfg.work / f"official_{size}.mp4").is_file()
        del official
    return row, latents


def lever_plan(plan: ExecutionPlan, device: torch.device) -> ExecutionPlan:
    """Every memory lever on: idle models off the device, UNet weights streamed (GPU), one guidance branch per
    call, feed-forward in 4 chunks, decode 2 frames at a time and not beside interpolation."""
    return plan.with_lever("all levers", cfg_batch=1, ff_chunk=4, decode_chunk=2, offload_idle_models=True,
                           unet_weight_offload=device.type == "cuda", overlap_decode=False)


def run_ours(cfg: BenchConfig, models: SonicModelSet, size: int, image: Path, speech: Path, video_seconds: float,
             *, levers: bool) -> tuple[dict[str, Any], torch.Tensor]:
    peak, _ = dense_fp16_peak_tflops(cfg.device)
    baseline(cfg.device, models)
    memory = PeakMemory(cfg.device)
    settings = GenerationSettings(min_resolution=size, inference_steps=cfg.steps, seed=SEED, crop_face=False,
                                  interpolation="rife")
    with DecodeInputs(models.vae) as decoded, UnetCalls(models.unet, cfg.device) as calls, memory.measure():
        started = time.perf_counter()
        # The official pipeline opens the picture with PIL (no EXIF turn) and does not crop: the same here.
        picture = np.asarray(Image.open(image).convert("RGB"))
        audio = load_audio_file(speech, max_duration_s=None)
        reference = prepare_reference(picture, min_resolution=size, crop=False,
                                      detector=make_face_detector(models.face_detector_path))
        prepared = time.perf_counter() - started
        height, width = reference.reference.shape[-2:]
        plan = ExecutionPlan(min_resolution=size, width=int(width), height=int(height), inference_steps=cfg.steps,
                             dtype=str(cfg.dtype).removeprefix("torch."), decode_chunk=8)
        plan = lever_plan(plan, cfg.device) if levers else plan
        placer = DevicePlacer(cfg.device, offload_idle=plan.offload_idle_models, stream_unet=plan.unet_weight_offload)
        result = generate(models, reference, audio, settings, plan, cfg.work / f"ours_{size}_{levers}.mp4",
                          device=cfg.device, placer=placer)
        seconds = time.perf_counter() - started
    latents = decoded.latents()
    flops = None if levers else calls.count_flops()
    stages = {"prepare_reference": round(prepared, 4), **{k: round(v, 4) for k, v in result.stage_seconds.items()}}
    row = side_row(seconds, video_seconds, stages,
                   unet_figures(calls, windows_of(len(latents), cfg.steps), flops, peak), memory.report(),
                   len(latents))
    row["plan"] = {k: v for k, v in plan.to_dict().items() if k in (
        "width", "height", "cfg_batch", "ff_chunk", "decode_chunk", "offload_idle_models", "unet_weight_offload",
        "overlap_decode", "dtype")}
    sampling = stages.get("sampling", 0.0)
    slowest = max(stages.get(name, 0.0) for name in ("decode", "interpolation", "encode"))
    row["critical_path_s"] = round(sampling + slowest, 4)
    return row, latents


def baseline(device: torch.device, models: SonicModelSet | None = None) -> None:
    """Every model of ours back on the CPU and the allocator's cache returned: each side starts alike."""
    if models is not None:
        for name in ("unet", "audio_token_projector", "motion_bucket_predictor", "whisper_encoder", "vae",
                     "image_encoder", "rife"):
            module = getattr(models, name)
            if module is not None:
                module.to("cpu")
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def warm_up(models: SonicModelSet, device: torch.device, dtype: torch.dtype, size: int, image: Path
            ) -> dict[str, Any]:
    """One 3-branch call of our UNet at the window shape both sides run (the official UNet has the same layers),
    so the side that runs first does not pay the device's and the kernels' first-call costs alone; then one more
    under the profiler: which attention kernels that window call really ran."""
    width, height = frame_size(size, *Image.open(image).size)
    dim, tokens = int(models.unet.config["cross_attention_dim"]), int(models.audio_token_projector.context_tokens)
    models.unet.to(device)

    def window_call() -> None:
        with torch.no_grad():
            models.unet(torch.randn(3, WINDOW_FRAMES, 8, height // 8, width // 8, device=device, dtype=dtype), 0.5,
                        torch.randn(3, 1, dim, device=device, dtype=dtype),
                        torch.randn(3, WINDOW_FRAMES, tokens, dim, device=device, dtype=dtype),
                        torch.randn(3, 3, device=device, dtype=dtype),
                        torch.rand(1, 1, height, width, device=device, dtype=dtype))

    window_call()
    kernels = attention_kernels(window_call, device)
    baseline(device, models)
    return kernels


def write_models(cfg: BenchConfig) -> dict[str, Any]:
    started = time.perf_counter()
    if cfg.device.type == "cuda":
        from sonic_guard.models.full_random import write_full_size_random_model_set

        write_full_size_random_model_set(cfg.model_root, build_device=cfg.device)
        kind = "full size random (sonic_guard.models.full_random), fp16"
    else:
        from sonic_guard.models.tiny import write_tiny_model_set

        write_tiny_model_set(cfg.model_root, seed=0)
        kind = "small random (sonic_guard.models.tiny), fp32"
    return {"model_set": kind, "write_s": round(time.perf_counter() - started, 1)}


def measure(cfg: BenchConfig, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every side at every resolution; the figures of one results file. `save` gets the results so far after every
    side (`complete` false until the end), so a run cut off by a time limit keeps what it finished."""
    official_reason = official_missing_reason(official_root())
    results: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(cfg.device) if cfg.device.type == "cuda" else None,
        "device": str(cfg.device), "official_available": official_reason is None,
        "official_skipped_reason": official_reason,
        "settings": {"sizes": list(cfg.sizes), "inference_steps": cfg.steps, "levers_sizes": list(cfg.levers_sizes),
                     "dtype": str(cfg.dtype).removeprefix("torch."), "image": IMAGE, "speech": SPEECH,
                     "speech_seconds_used": cfg.seconds, "seed": SEED, "repeats": cfg.repeats,
                     "cpu_threads": torch.get_num_threads() if cfg.device.type == "cpu" else None,
                     "guidance": "3 branches (official 2.0 / 7.5)",
                     "interpolation": "rife (25 fps)", "crop_face": False,
                     "official_code": "imported from $SONIC_OFFICIAL_DIR or ../shared/reference/sonic-official"},
        "complete": False, "by_resolution": {},
    }
    results["settings"].update(write_models(cfg))
    image, speech = example_inputs(cfg.work, cfg.seconds)
    video_seconds = load_audio_file(speech, max_duration_s=None).duration_s
    results["settings"]["video_seconds"] = round(video_seconds, 3)
    models = load_sonic_models(cfg.model_root, dtype=cfg.dtype)
    for size in cfg.sizes:
        attention = warm_up(models, cfg.device, cfg.dtype, size, image)
        row: dict[str, Any] = {"attention_kernels_ours": attention}
        outputs: dict[str, torch.Tensor] = {}
        results["by_resolution"][str(size)] = row
        sides = [*(["official"] if official_reason is None else []), "ours",
                 *(["ours_levers"] if size in cfg.levers_sizes else [])]
        for repeat in range(cfg.repeats):  # sides interleaved, so a busy moment of the machine hits all of them
            for side in sides:
                logger.info("%s at %d px (run %d of %d)", side, size, repeat + 1, cfg.repeats)
                if side == "official":
                    figures = run_official(cfg, size, image, speech, video_seconds)
                else:
                    figures = run_ours(cfg, models, size, image, speech, video_seconds, levers=side == "ours_levers")
                keep_fastest(row, outputs, side, *figures)
                save(results)
        row["outputs"] = compare_outputs(outputs)
        save(results)
    baseline(cfg.device, models)
    results.update(headline(results, cfg))
    results["complete"] = True
    return results


def keep_fastest(row: dict[str, Any], outputs: dict[str, torch.Tensor], side: str, figures: dict[str, Any],
                 latents: torch.Tensor) -> None:
    """Keep the fastest of a side's runs (the least disturbed by other work on the machine); every run's
    end-to-end seconds are listed, and every run's latents must be the same (the run is deterministic)."""
    previous = row.get(side)
    runs = [*(previous["end_to_end_runs_s"] if previous else []), figures["end_to_end_s"]]
    if side in outputs and not torch.equal(outputs[side], latents):
        raise RuntimeError(f"{side}: two runs of the same inputs gave different latents")
    if previous is None or figures["end_to_end_s"] < previous["end_to_end_s"]:
        row[side] = figures
    row[side]["end_to_end_runs_s"] = runs
    outputs[side] = latents


def compare_outputs(outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Final latents of the sides: official vs ours, and our own fp32 noise (levers vs none: other kernels)."""
    out: dict[str, Any] = {"what": "final latents handed to the VAE decoder (latents / 0.18215), all frames"}
    if "official" in outputs:
        out["official_vs_ours"] = difference(outputs["ours"], outputs["official"])
    if "ours_levers" in outputs:
        out["ours_levers_vs_ours"] = difference(outputs["ours"], outputs["ours_levers"])
        if "official" in outputs:
            out["official_vs_ours_levers"] = difference(outputs["ours_levers"], outputs["official"])
    return out


def headline(results: dict[str, Any], cfg: BenchConfig) -> dict[str, Any]:
    rows = results["by_resolution"]
    on_gpu = cfg.device.type == "cuda"
    _, peak_reason = dense_fp16_peak_tflops(cfg.device)
    out: dict[str, Any] = dict.fromkeys(HEADLINE_KEYS)
    reasons: dict[str, str] = {}  # why a headline figure is null
    notes: dict[str, str] = {}  # what a measured one does and does not say

    fractions = {size: {side: row[side]["unet"].get("fraction_of_dense_fp16_peak")
                        for side in ("official", "ours") if side in row} for size, row in rows.items()}
    if peak_reason is None:
        out["unet_fraction_of_peak"] = fractions
    else:
        reasons["unet_fraction_of_peak"] = peak_reason
    if results["official_available"]:
        out["speedup_vs_official"] = {size: round(row["official"]["end_to_end_s"] / row["ours"]["end_to_end_s"], 4)
                                      for size, row in rows.items()}
        if not on_gpu:
            notes["speedup_vs_official"] = ("measured on the CPU with the small model: the comparison is real "
                                                   "but says nothing about the GPU target (>= 1.5x at 512 px)")
    else:
        reasons["speedup_vs_official"] = results["official_skipped_reason"]
    if on_gpu:
        out["levers_time_ratio"] = {size: round(row["ours_levers"]["end_to_end_s"] / row["ours"]["end_to_end_s"], 4)
                                    for size, row in rows.items() if "ours_levers" in row}
    else:
        reasons["levers_time_ratio"] = ("the memory levers (weight streaming, idle models off the device) move "
                                        "weights between host and GPU; on the CPU they do nothing, so the ratio only "
                                        "means something on a GPU (the CPU run's times are under by_resolution)")
    out["wall_over_critical_path"] = {
        size: round(row["ours"]["end_to_end_s"] / row["ours"]["critical_path_s"], 4) for size, row in rows.items()}
    if not on_gpu:
        notes["wall_over_critical_path"] = "measured on the CPU with the small model (the target is for a GPU)"
    out["attention_all_fused"] = {size: row["attention_kernels_ours"]["all_fused"] for size, row in rows.items()}
    out["not_measured"] = reasons
    out["notes"] = notes
    out["targets_measured_on_gpu"] = on_gpu
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="the CPU path (small model) even where a GPU is")
    parser.add_argument("--sizes", type=int, nargs="+", help="default 512 768 on a GPU, 128 on the CPU")
    parser.add_argument("--steps", type=int, help="default 25 on a GPU, 2 on the CPU")
    parser.add_argument("--seconds", type=float, help="seconds of the 10 s speech clip (default all; 2 on the CPU)")
    parser.add_argument("--levers-sizes", type=int, nargs="*", help="sizes with the all-levers run (default: the "
                                                                    "smallest size)")
    parser.add_argument("--repeats", type=int, help="runs per side, the fastest kept (default 1 on a GPU, 2 on the "
                                                    "CPU, where other work on the machine disturbs single runs)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the CPU path (default 1)")
    parser.add_argument("--models-dir", type=Path, help="where the random model set is written (default: temp)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace, work: Path) -> BenchConfig:
    gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    sizes = tuple(args.sizes or ((512, 768) if gpu else (128,)))
    default_root = Path(tempfile.gettempdir()) / "sonic-full-random" if gpu else work / "tiny-sonic"
    return BenchConfig(
        device=device, sizes=sizes, steps=args.steps or (25 if gpu else 2),
        seconds=args.seconds or (10.0 if gpu else 2.0),
        levers_sizes=tuple(args.levers_sizes if args.levers_sizes is not None else sizes[:1]),
        repeats=args.repeats or (1 if gpu else 2),
        model_root=args.models_dir or default_root, work=work,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="sonic_speed_") as folder:
        cfg = config_from(args, Path(folder))
        if cfg.device.type == "cpu":
            # One thread: on a shared small CPU box, OpenMP's spinning workers turn other processes' load into
            # 10x swings of a run (measured: the same run 3 s and 52 s); one thread makes the sides comparable.
            torch.set_num_threads(args.threads)
        command = [str(Path(__file__)), *(argv if argv is not None else sys.argv[1:])]

        def save(results: dict[str, Any]) -> None:
            write_results(args.out, {**results, "gpu_reason": None if cfg.device.type == "cuda" else NO_GPU},
                          argv=command)

        started = time.perf_counter()
        results = measure(cfg, save)
        results["bench_seconds"] = round(time.perf_counter() - started, 1)
        save(results)
    path = args.out
    print(f"wrote {path}")
    for size, row in results["by_resolution"].items():
        print(size, {side: row[side]["end_to_end_s"] for side in ("official", "ours", "ours_levers") if side in row},
              row["outputs"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
