"""Reliability bench through a real ComfyUI server: every bad input of tests/hardening_cases.py, a cancel and a
load check, kill -9 resume and disk full, the official example inputs, then two soaks of consecutive small runs,
with the server's RSS, threads, open files, live tensors and temp files before and after.

    python bench/bench_reliability.py --soak-runs 200 --soak-budget-s 1200

Writes bench/results/reliability.json, whole, through bench/results_file.py (with the command, versions, machine
and date). The two soaks run one after the other on the same server: `soak_history_cleared` clears ComfyUI's
/history after every run (what the pack itself keeps), `soak_history_kept` does not (ComfyUI keeps every prompt and
its outputs, up to 10000). Each soak stops early when its time budget runs out and says so (`runs` is what really
ran). Each soak run: 0.5 s of real speech, 128 px, 1 step, no interpolation, the small random model set; ComfyUI
runs with --cpu --cache-none, so every run also reloads the models. The RSS growth limit is the CI soak's
(tests/test_hardening_soak.py).

`crash_resume_ok`, `corrupt_segment_redone` and `disk_full_ok` come from running the scenarios of
tests/test_crash_resume_server.py (kill -9 in the middle of a segmented job, one finished segment damaged on disk,
a new server on the same folder) and tests/test_disk_full.py (the video writer onto a full 2 MiB tmpfs, which
needs root to mount) here, on their own servers and disk.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for extra in (REPO, REPO / "tests", REPO / "scripts"):
    sys.path.insert(0, str(extra))

from comfy_host import ComfyServer  # noqa: E402
from hardening_cases import CASES, QUICK, portrait, quick_prompt, save_image, speak  # noqa: E402
from hardening_server import (  # noqa: E402
    evaluate,
    execution_error_of,
    follow_prompt,
    interrupt_after_first_segment,
    request_burst,
    run_prompt,
    server_resources,
    wait_finished,
)
from results_file import write_results  # noqa: E402  (bench/ is on sys.path: run as python bench/...)
from test_crash_resume_server import crash_scenario  # noqa: E402
from test_disk_full import mount_small_disk, unmount_small_disk, writer_disk_full_scenario  # noqa: E402
from test_hardening_soak import RSS_GROWTH_LIMIT  # noqa: E402

logger = logging.getLogger("bench_reliability")
NODE_IDS = ("SonicGuardModelLoader", "SonicGuardLoadAudio", "SonicGuardGenerate")
SERVER_FLAGS = ("--cache-none",)  # comfy_host adds --cpu
SOAKS = ("history-cleared", "history-kept")


def start_server(base: Path) -> ComfyServer:
    from sonic_guard.models.tiny import write_tiny_model_set

    write_tiny_model_set(base / "models" / "sonic" / "tiny-sonic", seed=0)
    (base / "input").mkdir(parents=True, exist_ok=True)
    speak(base / "input" / "speech.wav")
    save_image(portrait(), base / "input" / "portrait.png")
    # One OpenMP thread: on a shared CPU, small kernels spin-wait on each other with more.
    return ComfyServer.start(base, extra_args=list(SERVER_FLAGS), required_nodes=NODE_IDS,
                             env={"OMP_NUM_THREADS": omp_threads(), "SONIC_GUARD_DIAGNOSTICS": "1"})


def omp_threads() -> str:
    return os.environ.get("OMP_NUM_THREADS", "1")


def describe_server(server: ComfyServer) -> dict:
    stats = server.get_json("/system_stats")
    return {"comfyui_version": stats["system"].get("comfyui_version"), "flags": ["--cpu", *SERVER_FLAGS],
            "omp_num_threads": int(omp_threads()), "devices": [d.get("type") for d in stats.get("devices", [])],
            "models": "small random model set (sonic_guard.models.tiny), official layout"}


def valid_run(server: ComfyServer, seed: int = 0) -> float:
    started = time.monotonic()
    _, answer, history = run_prompt(server, quick_prompt(seed=seed))
    if history is None or execution_error_of(history) is not None:
        raise RuntimeError(f"a valid run failed: {answer or execution_error_of(history)}")
    return time.monotonic() - started


def bad_inputs(server: ComfyServer) -> dict:
    for seed in range(2):  # warm: lazy imports, allocator pools and the estimator's caches fill on first runs
        valid_run(server, seed)
    baseline = server_resources(server)
    outcomes = []
    for case in CASES:
        outcome = evaluate(server, case)
        logger.info("%-28s %-9s handled=%s %s", case.name, outcome.stage, outcome.handled, outcome.message[:120])
        outcomes.append({
            "case": case.name, "category": case.category, "accepted_input": case.accepted,
            "stage": outcome.stage, "handled": outcome.handled, "exception_type": outcome.exception_type,
            "seconds": round(outcome.seconds, 2), "server_alive": outcome.server_alive,
            "message": outcome.message[:400],
        })
    next_run_s = valid_run(server, seed=11)
    after = server_resources(server)
    return {
        "bad_inputs_tried": len(outcomes),
        "bad_inputs_handled": sum(o["handled"] for o in outcomes),
        "refused_with_our_error": sum(o["stage"] == "execution" and o["handled"] for o in outcomes),
        "refused_at_queue": sum(o["stage"] == "queue" and o["handled"] for o in outcomes),
        "accepted_and_converted": sum(o["stage"] == "success" and o["handled"] for o in outcomes),
        "server_alive_throughout": all(o["server_alive"] for o in outcomes),
        "slowest_refusal_s": max((o["seconds"] for o in outcomes if o["stage"] != "success"), default=0.0),
        "next_valid_run_s": round(next_run_s, 2),
        "resources_before": baseline,
        "resources_after_next_run": after,
        "rss_change_after_bad_inputs": round(after["rss_bytes"] / baseline["rss_bytes"] - 1, 4),
        "cases": outcomes,
    }


def soak(server: ComfyServer, runs: int, budget_s: float, clear_history: bool) -> dict:
    server.post_json("/history", {"clear": True})  # each soak starts from an empty history
    for seed in range(3):
        valid_run(server, seed)
    baseline = server_resources(server)
    census_before = server.get_json("/sonic/debug/resources?census=60", timeout=120)["objects"]
    samples = [{"run": 0, **baseline}]
    seconds: list[float] = []
    started = time.monotonic()
    while len(seconds) < runs and time.monotonic() - started < budget_s:
        seconds.append(valid_run(server, 1000 + len(seconds)))
        if clear_history:  # ComfyUI keeps every prompt and its outputs (up to 10000) in /history
            server.post_json("/history", {"clear": True})
        if len(seconds) % 10 == 0:
            samples.append({"run": len(seconds), **server_resources(server)})
            logger.info("soak %d runs, rss %.1f MiB", len(seconds), samples[-1]["rss_bytes"] / 2**20)
    final = server_resources(server)
    census_after = server.get_json("/sonic/debug/resources?census=60", timeout=120)["objects"]
    samples.append({"run": len(seconds), **final})
    growth = {name: census_after.get(name, 0) - census_before.get(name, 0) for name in {*census_before, *census_after}}
    gpu = None
    if final.get("gpu") and baseline.get("gpu"):
        gpu = final["gpu"]["allocated"] - baseline["gpu"]["allocated"]
    rss_growth = final["rss_bytes"] / baseline["rss_bytes"] - 1
    rss_mib = [round(s["rss_bytes"] / 2**20, 1) for s in samples]
    result = {
        "history_cleared_each_run": clear_history,
        "runs": len(seconds),
        "runs_requested": runs,
        "stopped_by_budget": len(seconds) < runs,
        "budget_s": budget_s,
        "seconds": round(time.monotonic() - started, 1),
        "run_seconds_median": round(statistics.median(seconds), 2) if seconds else None,
        "rss_growth": round(rss_growth, 4),
        "rss_growth_within_limit": rss_growth <= RSS_GROWTH_LIMIT,
        "rss_mib_per_run": round((rss_mib[-1] - rss_mib[0]) / len(seconds), 4) if seconds else None,
        # The largest rise between two samples (10 runs apart): a step, not a creep, when far above the median rise.
        "rss_largest_rise_between_samples_mib": round(max(b - a for a, b in zip(rss_mib, rss_mib[1:])), 1),
        "rss_mib": rss_mib,
        "live_tensors": [baseline.get("live_tensors"), final.get("live_tensors")],
        "threads": [baseline["os_threads"], final["os_threads"]],
        "open_files": [baseline["open_files"], final["open_files"]],
        "temp_files_after": final["temp_files"],
        "gpu_allocated_growth_bytes": gpu,
        "samples": samples,
        # Object types whose count grew most (among the 60 most numerous before and after): what a slow leak is.
        "object_growth": dict(sorted(((k, v) for k, v in growth.items() if v > 0), key=lambda kv: -kv[1])[:15]),
        "object_growth_per_run": {k: round(v / len(seconds), 2) for k, v in growth.items() if v > 0 and seconds},
    }
    if gpu is None:
        result["gpu_not_measured_reason"] = "no CUDA device was available (the bench's ComfyUI server runs with --cpu)"
    return result


def cancel_and_load(server: ComfyServer, burst: int = 120, workers: int = 6) -> dict:
    cancel = interrupt_after_first_segment(server)
    next_run_s = valid_run(server, seed=21)
    answers: list[tuple[int, float]] = []

    def fire(events: list, prompt_id: str) -> None:
        if not answers:
            answers.extend(request_burst(server, burst, workers))

    started = time.monotonic()
    prompt_id, _ = follow_prompt(server, quick_prompt(duration=2.0, inference_steps=2, seed=7), fire)
    history = wait_finished(server, prompt_id, 120)
    loaded_run_s = time.monotonic() - started
    started = time.monotonic()
    follow_prompt(server, quick_prompt(duration=2.0, inference_steps=2, seed=7), lambda events, pid: None)
    quiet_run_s = time.monotonic() - started
    seconds = sorted(t for _, t in answers)
    return {
        "cancel_latency_s": round(cancel["latency_s"], 2) if cancel["latency_s"] is not None else None,
        "cancel_window_s": round(cancel["window_s"], 2) if cancel["window_s"] is not None else None,
        "cancel_last_event": cancel["last_event"],
        "cancel_segments_kept": cancel["segments_kept"],
        "cancel_partial_files_left": cancel["partial_left"],
        "cancel_next_run_s": round(next_run_s, 2),
        "load_requests": len(answers),
        "load_answered": sum(status in (200, 503) for status, _ in answers),
        "load_statuses": sorted({status for status, _ in answers}),
        "load_p50_s": round(seconds[len(seconds) // 2], 3) if seconds else None,
        "load_max_s": round(seconds[-1], 3) if seconds else None,
        "load_run_succeeded": execution_error_of(history) is None,
        "load_run_s": round(loaded_run_s, 2),
        "same_run_without_load_s": round(quiet_run_s, 2),
    }


def crash_and_disk_full(work: Path) -> dict:
    """The crash scenario of tests/test_crash_resume_server.py (kill -9 mid-job, a damaged segment, restart on the
    same folder) on its own servers, and the writer's disk-full scenario of tests/test_disk_full.py on a 2 MiB
    tmpfs (a loop file where tmpfs cannot be mounted): what each run did, and whether it was right."""
    from conftest import server_base_dir

    from sonic_guard.models.tiny import write_tiny_model_set

    sources = work / "crash_sources"
    write_tiny_model_set(sources / "tiny-sonic", seed=0)
    speech = speak(sources / "speech.wav")
    save_image(portrait(), sources / "portrait.png")
    base = server_base_dir(work / "crash_comfy", sources / "tiny-sonic", speech, sources / "portrait.png")
    servers: list[ComfyServer] = []
    started = time.monotonic()
    try:
        crash = crash_scenario(base, servers)
    finally:
        for server in servers:
            server.stop()
    crash_s = time.monotonic() - started
    disk = work / "small_disk"
    kind = mount_small_disk(disk)
    try:
        full = writer_disk_full_scenario(disk)
    finally:
        unmount_small_disk(disk)
    error = full["error"]
    message = str(error) if error is not None else ""
    disk_full_ok = (error is not None and error.reason == "disk_full" and str(disk) in message
                    and "Fix:" in message and full["left_after_failure"] == [] and full["next_run_frames"] == 25)
    logger.info("crash resume: %s; disk full: %s", crash, full)
    return {
        "crash_resume_ok": bool(crash["error"] is None and crash["reused_ok"] and crash["complete"]
                                and not crash["leftovers"]),
        "corrupt_segment_redone": bool(crash["damaged_redone"]),
        "disk_full_ok": bool(disk_full_ok),
        "crash_resume": {key: crash.get(key) for key in (
            "done_at_kill", "intact", "reused_logged", "frames", "fps", "audio_s", "leftovers")}
        | {"seconds": round(crash_s, 1), "notes": [n for n in crash["notes"] if "redone" in n or "reused" in n]},
        "disk_full": {"disk": f"{kind}, 2 MiB", "message": message[:400],
                      "left_after_failure": full["left_after_failure"], "next_run_frames": full["next_run_frames"]},
    }


def real_inputs(base: Path) -> dict:
    """The official example pictures and speech/singing (bench_real_inputs.py has the per-file table)."""
    from bench_real_inputs import measure_real_inputs

    measured = measure_real_inputs(base)
    return {"real_inputs_tried": measured["real_inputs_tried"], "real_inputs_handled": measured["real_inputs_handled"],
            "real_inputs_not_handled": [row["input"] for row in measured["inputs"] if not row["handled"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--soak-runs", type=int, default=200, help="runs per soak")
    parser.add_argument("--soak-budget-s", type=float, default=1200.0, help="time budget per soak")
    parser.add_argument("--soaks", nargs="*", default=list(SOAKS), choices=SOAKS,
                        help="history-cleared: clear ComfyUI's /history after every run (the pack's own growth); "
                             "history-kept: keep it (ComfyUI's growth too)")
    parser.add_argument("--skip-bad-inputs", action="store_true")
    parser.add_argument("--skip-cancel-load", action="store_true")
    parser.add_argument("--skip-crash-disk", action="store_true",
                        help="skip the kill -9 resume and disk-full scenarios (they need root to mount a tmpfs)")
    parser.add_argument("--skip-real-inputs", action="store_true",
                        help="skip the official example inputs (bench/bench_real_inputs.py, its own server)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "reliability.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="sonic_reliability_") as work:
        server = start_server(Path(work))
        try:
            result: dict = {
                "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                "server": describe_server(server),
                "run": {"workflow": "workflows/sonic_basic_api.json", "generator_inputs": QUICK,
                        "audio": "real espeak-ng speech", "image": "skimage astronaut portrait"},
                "measurement": server_resources(server).get("source"),
                "soak_rss_growth_limit": RSS_GROWTH_LIMIT,
            }
            if not args.skip_bad_inputs:
                result.update(bad_inputs(server))
            if not args.skip_cancel_load:
                result.update(cancel_and_load(server))
            if not args.skip_crash_disk:
                result.update(crash_and_disk_full(Path(work)))
            if not args.skip_real_inputs:
                result.update(real_inputs(Path(work) / "examples"))
            for name in args.soaks:
                key = "soak_" + name.replace("-", "_")
                result[key] = soak(server, args.soak_runs, args.soak_budget_s, clear_history=name == "history-cleared")
        finally:
            server.stop()
    write_results(args.out, result)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
