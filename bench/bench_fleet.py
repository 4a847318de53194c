"""Fleet bench: several CPU ranks on one video, two ComfyUI workers behind HAProxy (load, then a worker killed
mid-batch), metrics remote-written through the tenant gateway, and the capacity the run history's time model gives.

    python bench/bench_fleet.py [--load-jobs 40] [--kill-jobs 8]

Writes bench/results/fleet.json whole. Everything runs on this machine's CPU with the small random model set, so
throughput and latency are those of the fleet machinery (balancer, client, queueing, downloads) on tiny
generations, not of real Sonic videos; the GPU capacity rows come from the time model, not from a GPU here.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import Any

from results_file import RESULTS_DIR, write_results  # bench/ is on sys.path: run as python bench/bench_fleet.py

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO, REPO / "tests", REPO / "scripts"):
    sys.path.insert(0, str(extra))

import fleet_harness as fleet  # noqa: E402
import torch  # noqa: E402

from sonic_guard.memory.fitted_corrections import TimeModel  # noqa: E402

NO_GPU_REASON = ("no GPU is lent to this machine (torch.cuda.is_available() is False): the per-rank figure is the "
                 "CPU's, with gloo, 1 thread per rank, on a 2-core box shared with other work; each rank's time "
                 "includes spawning it and loading its models, which dominate a 65-frame clip of the small model, "
                 "so the CPU figure says nothing about GPU speed-up")
FRAMES_PER_SECOND = 25  # Sonic's video rate: one latent frame per 40 ms of audio
CAPACITY_CLIP_S = 10.0
CAPACITY_STEPS = 25
CAPACITY_RESOLUTIONS = (384, 512, 576, 768)
TARGET_VIDEOS_PER_HOUR = 100
UTILISATION = 0.8  # plan workers at 80 % busy: queues stay short and one worker may be down


# --- several ranks on one video (CPU, gloo) ----------------------------------------------------------------
def ranks_check(models_dir: Path, speech: Path) -> dict[str, Any]:
    """The single-process latents against 2 and 3 gloo ranks (test_distributed_windows' clip), with times."""
    from conftest import portrait_rgb

    from sonic_guard.conditioning.reference_image import prepare_reference
    from sonic_guard.face.choose_detector import make_face_detector
    from sonic_guard.inputs.audio_loading import fit_duration, load_audio_file
    from sonic_guard.memory.plan import ExecutionPlan
    from sonic_guard.models.checkpoints import load_sonic_models
    from sonic_guard.runs.pipeline import clip_conditioning, default_placer, prepare_clip, sample_clip
    from sonic_guard.runs.runtime import RunHooks
    from sonic_guard.sampling.multi_device.launcher import sample_on_devices
    from sonic_guard.sampling.multi_device.payload import RankJob
    from sonic_guard.settings import GenerationSettings

    cpu, steps, seed = torch.device("cpu"), 2, 11
    models = load_sonic_models(models_dir, with_rife=False)
    audio = fit_duration(load_audio_file(speech), 5.2)[0]
    settings = GenerationSettings(min_resolution=128, inference_steps=steps, interpolation="none", seed=seed)
    reference = prepare_reference(portrait_rgb(), min_resolution=128, detector=make_face_detector(None))
    height, width = reference.reference.shape[-2:]
    plan = ExecutionPlan(min_resolution=128, width=int(width), height=int(height), inference_steps=steps,
                         dtype="float32")
    inputs = prepare_clip(models, reference, audio, settings, plan, default_placer(cpu, plan), cpu, RunHooks())
    conditioning = clip_conditioning(inputs, reference)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks run 1 thread each: the same kernels, so bit-for-bit is a fair ask
    try:
        started = time.monotonic()
        want = sample_clip(models, conditioning, settings, plan, default_placer(cpu, plan), cpu, RunHooks(),
                           seed=seed, on_window=lambda done, total: None)
        single_s = time.monotonic() - started
    finally:
        torch.set_num_threads(before)
    rows: dict[str, Any] = {}
    for ranks in (2, 3):
        job = RankJob(model_paths=models.paths, conditioning=conditioning, settings=settings, plan=plan, seed=seed,
                      anchor_latents=None, devices=("cpu",) * ranks, threads_per_rank=1, timeout_s=300.0)
        started = time.monotonic()
        got = sample_on_devices(job, lambda done, total: None)
        seconds = time.monotonic() - started
        rows[str(ranks)] = {"bitwise_equal": bool(torch.equal(got, want)), "seconds": round(seconds, 2),
                            "speed_up_vs_single_process": round(single_s / seconds, 3)}
    return {"single_process_seconds": round(single_s, 2), "frames": int(conditioning.num_frames),
            "by_ranks": rows}


# --- capacity from the time model ----------------------------------------------------------------------------
def capacity_rows(model: TimeModel, label: str) -> list[dict[str, Any]]:
    """Videos per hour per worker and workers for TARGET_VIDEOS_PER_HOUR, for a square CAPACITY_CLIP_S clip."""
    frames = int(CAPACITY_CLIP_S * FRAMES_PER_SECOND)
    rows = []
    for side in CAPACITY_RESOLUTIONS:
        seconds = model.run_seconds(side, side, CAPACITY_STEPS, frames, cfg_batch=3)
        per_hour = 3600.0 / seconds
        rows.append({"time_model": label, "source": model.source, "resolution": side,
                     "seconds_per_video": round(seconds, 1), "videos_per_hour_per_worker": round(per_hour, 2),
                     "workers_for_target": math.ceil(TARGET_VIDEOS_PER_HOUR / (per_hour * UTILISATION))})
    return rows


def history_time_model(workers: list[Any]) -> TimeModel:
    """The time model fitted from every worker's run history (their own SQLite files)."""
    samples: list[tuple[int, float]] = []
    for worker in workers:
        path = worker.base / "user" / "sonic_guard" / "history.sqlite"
        if path.is_file():
            # The rows RunHistory.time_model fits, pooled over the workers (the same GPU type: one model).
            with closing(sqlite3.connect(path)) as conn:
                samples += [(int(px), float(sec) / int(calls)) for px, sec, calls in conn.execute(
                    "SELECT unet_pixel_frames, unet_seconds, unet_calls FROM runs "
                    "WHERE unet_pixel_frames > 0 AND unet_seconds > 0 AND unet_calls > 0")]
    return TimeModel.fit(samples)


# --- the fleet -----------------------------------------------------------------------------------------------
def fleet_runs(root: Path, models_dir: Path, portrait: Path, speech: Path, load_jobs: int,
               kill_jobs: int) -> dict[str, Any]:
    from fleet_harness import StateSummary, leftover_partials

    from sonic_guard.client.batch import STATE_FILE_NAME

    workers = fleet.start_workers(root, 2, models_dir)
    named = {f"worker{number:02d}": worker for number, worker in enumerate(workers, start=1)}
    results: dict[str, Any] = {}
    try:
        proxy = fleet.HAProxy.start(root / "haproxy", [(n, w.port) for n, w in named.items()], "500ms")
        try:
            load = fleet.run_batch(proxy.url, fleet.make_pairs(root / "load_pairs", load_jobs, portrait, speech),
                                   root / "load_out", parallel=4)
            load_state = StateSummary.read(root / "load_out" / STATE_FILE_NAME)
            latencies = load.latencies()
            results["load"] = {
                "jobs": load_jobs, "parallel": 4, "workers": 2, "seconds": round(load.seconds, 1),
                "jobs_per_minute": round(60 * len(load.outcome.done) / load.seconds, 2),
                "latency_p50_s": round(fleet.percentile(latencies, 0.5), 2),
                "latency_p95_s": round(fleet.percentile(latencies, 0.95), 2),
                "jobs_by_worker": {name: sum(1 for lines in load_state.done.values() if lines[0]["worker"] == name)
                                   for name in named},
                "done_once": sum(1 for lines in load_state.done.values() if len(lines) == 1),
                "partial_files": len(leftover_partials(root / "load_out")),
            }
            time_model = history_time_model(workers)
            kill = fleet.run_batch(proxy.url, fleet.make_pairs(root / "kill_pairs", kill_jobs, portrait, speech),
                                   root / "kill_out", parallel=2, proxy=proxy, workers=named, kill_after_done=2)
            kill_state = StateSummary.read(root / "kill_out" / STATE_FILE_NAME)
            results["kill"] = {
                "jobs": kill_jobs, "killed": kill.killed, "seconds": round(kill.seconds, 1),
                "down_after_kill_s": None if kill.down_after_s is None else round(kill.down_after_s, 2),
                "haproxy_check": "inter 500ms fall 2",
                "jobs_retried_elsewhere": sorted(name for name, lines in kill_state.failed.items()
                                                 if any(x["worker"] == kill.killed for x in lines)),
                "done_once": sum(1 for lines in kill_state.done.values() if len(lines) == 1),
                "partial_files": len(leftover_partials(root / "kill_out")),
            }
        finally:
            proxy.stop()
        survivor = next(w for n, w in named.items() if n != results["kill"]["killed"])
        results["remote_write"] = remote_write(root / "metrics", survivor)
        results["time_model"] = time_model
    finally:
        fleet.stop_all(workers)
    return results


def remote_write(root: Path, worker: Any) -> dict[str, Any]:
    """agent -> tenant gateway -> recording proxy -> receiver, as tests/test_fleet_remote_write.py does."""
    receiver = fleet.Prometheus.start(root / "receiver", {"global": {"scrape_interval": "1m"}}, receiver=True)
    try:
        with fleet.recording_proxy(f"{receiver.url}/api/v1/write") as at_receiver:
            gateway = fleet.Gateway.start(root / "gateway", at_receiver.server_address[1])
            try:
                with fleet.recording_proxy(f"{gateway.url}/api/v1/push") as from_agent:
                    config = fleet.agent_config(worker.port, f"{from_agent.url}/api/v1/push", "bench-worker")
                    agent = fleet.Prometheus.start(root / "agent", config, agent=True)
                    try:
                        fleet.wait_until(lambda: receiver.query('sonic_runs_total{worker="bench-worker"}'), 60,
                                         "the pack's series in the receiver")
                        time.sleep(3)  # a few more pushes: every series of a scrape has arrived
                    finally:
                        agent.stop()
            finally:
                gateway.stop()
        series = receiver.query('count({worker="bench-worker", __name__=~"sonic_.*"})')
        agent_headers = from_agent.seen[0][1] if from_agent.seen else {}
        return {
            "series_received": int(float(series[0]["value"][1])) if series else 0,
            "pushes": len(at_receiver.seen),
            "agent_user_agent": agent_headers.get("user-agent"),
            "agent_sent_tenant_header": "x-scope-orgid" in agent_headers,
            "tenant_at_receiver": sorted({h.get("x-scope-orgid") or "" for _, h in at_receiver.seen}),
        }
    finally:
        receiver.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-jobs", type=int, default=40)
    parser.add_argument("--kill-jobs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "fleet.json")
    args = parser.parse_args(argv)

    from conftest import portrait_rgb, speak
    from PIL import Image

    from sonic_guard.models.tiny import write_tiny_model_set

    root = Path(tempfile.mkdtemp(prefix="sonic_fleet_bench_"))
    try:
        write_tiny_model_set(root / "tiny-sonic", seed=0)
        portrait = root / "portrait.png"
        Image.fromarray(portrait_rgb()).save(portrait)
        speech = speak(root / "speech.wav")
        short = speak(root / "hi.wav", "Hi.")
        ranks = ranks_check(root / "tiny-sonic", speech)
        runs = fleet_runs(root / "fleet", root / "tiny-sonic", portrait, short, args.load_jobs, args.kill_jobs)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    load, kill, metrics = runs["load"], runs["kill"], runs["remote_write"]
    submitted = load["jobs"] + kill["jobs"]
    finished = load["done_once"] + kill["done_once"]
    cpu_model: TimeModel = runs["time_model"]
    results = {
        "ranks_bitwise_equal": all(row["bitwise_equal"] for row in ranks["by_ranks"].values()),
        "ranks": ranks,
        "speed_up_per_added_rank_gpu": None,
        "speed_up_per_added_rank_gpu_reason": NO_GPU_REASON if not torch.cuda.is_available() else None,
        "jobs_submitted": submitted,
        "jobs_finished": finished,
        "jobs_lost": submitted - finished,
        "worker_killed_mid_batch": kill["killed"] is not None and bool(kill["jobs_retried_elsewhere"]),
        "remote_write_series_received": metrics["series_received"],
        "throughput_jobs_per_minute": load["jobs_per_minute"],
        "latency_p50_s": load["latency_p50_s"],
        "latency_p95_s": load["latency_p95_s"],
        "load": load,
        "kill": kill,
        "remote_write": metrics,
        "capacity": {
            "clip_seconds": CAPACITY_CLIP_S, "steps": CAPACITY_STEPS, "cfg_batch": 3,
            "target_videos_per_hour": TARGET_VIDEOS_PER_HOUR, "utilisation": UTILISATION,
            "default_model": asdict(TimeModel()),
            "cpu_tiny_model_fitted": asdict(cpu_model),
            "rows": capacity_rows(TimeModel(), "default (uncalibrated)")
            # Fitted at 128 px on the small model: shows the calculation from real history rows, not a capacity.
            + capacity_rows(cpu_model, "this CPU, small random model (fitted from the workers' history)"),
            "gpu_rows": None,
            "gpu_rows_reason": "no GPU is lent here, so no GPU's history exists to fit; run this bench on a "
                               "worker of each GPU type (its history.sqlite) to get that GPU's rows",
        },
        "note": "CPU only, small random model, 0.5 s of audio, 128 px, 1 step: the fleet machinery's figures, "
                "not real Sonic throughput",
    }
    path = write_results(args.out, results)
    print(f"wrote {path}")
    for key in ("ranks_bitwise_equal", "jobs_submitted", "jobs_finished", "jobs_lost", "worker_killed_mid_batch",
                "remote_write_series_received", "throughput_jobs_per_minute", "latency_p50_s", "latency_p95_s"):
        print(f"{key}: {results[key]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
