"""Overhead of profiling: the same CPU/torch workload with no agent vs under stage tags with the pyroscope-io
agent running and pushing to a loopback receiver (in its own process, so decoding does not compete).

Three arms, rotated in one run to cancel drift on a shared machine: no agent ("off"), the agent sampling but no
thread tags ("agent", the sampler's own cost), and the agent with stage tags ("tagged", what a profiled run
pays). Reported: ratios against "off" of wall time, of the workload thread's CPU time (what the prompt thread
pays: its wall time when cores are free) and of process CPU time (which adds the agent's own threads), plus two
direct measures, because A/B wall ratios are noisy on a small shared machine: the CPU the agent's threads used
(psutil) and the cost of one stage switch with tags. Splitting "agent" from "tagged" says where overhead comes
from: sampling (rate-bound, in the agent's threads) or tag churn (per stage switch, on the prompt thread).
Goal: <= 2 % wall.

    .venv/bin/python bench/bench_profiling_overhead.py [--pairs N] [--seconds-per-rep S] [--sample-rate HZ]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import psutil
import torch
from results_file import write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sonic_guard.telemetry import ProfilingConfig, Telemetry, run_tags  # noqa: E402
from sonic_guard.telemetry.profiling_config import DEFAULT_SAMPLE_RATE_HZ  # noqa: E402

STAGES = ("preprocess", "audio_features", "sampling", "decode", "interpolation", "encode")


def workload_step(a: torch.Tensor) -> float:
    """A little torch (GIL released) and a little Python, like a sampler window plus its bookkeeping."""
    b = torch.tanh(a @ a)
    total = 0.0
    for value in range(300):
        total += value * 0.5
    return float(b[0, 0]) + total


def calibrate(seconds: float) -> int:
    """Steps that take about `seconds` of CPU here (median of a few probes)."""
    a = torch.randn(256, 256)
    probes = []
    for _ in range(5):
        start = time.process_time()
        for _ in range(20):
            workload_step(a)
        probes.append((time.process_time() - start) / 20)
    return max(6, int(seconds / statistics.median(probes)))


def run_workload(steps: int, observer: object | None, steps_per_stage: int) -> tuple[float, float, float]:
    """(wall, process CPU, this thread's CPU) seconds for `steps` steps, changing stage every `steps_per_stage`."""
    a = torch.randn(256, 256)
    start, cpu_start, thread_start = time.perf_counter(), time.process_time(), time.thread_time()
    for first in range(0, steps, steps_per_stage):
        stage = STAGES[(first // steps_per_stage) % len(STAGES)]
        context = observer.stage(stage) if observer is not None else nullcontext()  # type: ignore[attr-defined]
        with context:
            for _ in range(min(steps_per_stage, steps - first)):
                workload_step(a)
    return time.perf_counter() - start, time.process_time() - cpu_start, time.thread_time() - thread_start


def thread_cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) per thread id of this process."""
    return {thread.id: thread.user_time + thread.system_time for thread in psutil.Process().threads()}


def stage_switch_cost_us(observer: object, count: int = 20000) -> float:
    """Wall microseconds for entering and leaving one stage."""
    start = time.perf_counter()
    for _ in range(count):
        with observer.stage("decode"):  # type: ignore[attr-defined]
            pass
    return (time.perf_counter() - start) / count * 1e6


def ratios(tagged: list[float], untagged: list[float]) -> dict[str, float]:
    pairs = [t / u for t, u in zip(tagged, untagged)]
    return {
        "ratio_of_medians": round(statistics.median(tagged) / statistics.median(untagged), 4),
        "median_pair_ratio": round(statistics.median(pairs), 4),
        "ratio_of_minimums": round(min(tagged) / min(untagged), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--seconds-per-rep", type=float, default=2.0)
    parser.add_argument("--sample-rate", type=int, default=DEFAULT_SAMPLE_RATE_HZ,
                        help="pyroscope sample rate in Hz (default: the pack's)")
    parser.add_argument("--steps-per-stage", type=int, default=10, help="workload steps (~0.7 ms) per stage")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "profiling_overhead.json")
    args = parser.parse_args()

    receiver = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "pyroscope_receiver.py"), "normal"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    address = receiver.stdout.readline().strip()  # type: ignore[union-attr]
    config = ProfilingConfig(
        server_address=address, upload_interval_s=1, stop_timeout_s=5, sample_rate=args.sample_rate
    )
    tags = run_tags(duration_s=10, width=512, height=512, inference_steps=25, user_tags={"bench": "overhead"})
    torch.set_num_threads(1)  # one intra-op thread: far less noise on a small shared machine
    run_workload(50, None, args.steps_per_stage)  # warm-up
    steps = calibrate(args.seconds_per_rep)

    arms: dict[str, list[tuple[float, float, float]]] = {"off": [], "agent": [], "tagged": []}
    agent_cpu: dict[str, list[float]] = {"agent": [], "tagged": []}
    switch_cost: dict[str, float] = {}
    order = list(arms)
    for rep in range(args.pairs):
        for arm in order[rep % 3:] + order[:rep % 3]:  # rotate so no arm always runs first
            if arm == "off":
                arms["off"].append(run_workload(steps, None, args.steps_per_stage))
                continue
            before = thread_cpu_seconds()
            telemetry = Telemetry()
            status = telemetry.start_profiling(config)
            if not status.active:
                raise SystemExit(f"profiling did not start: {status.message}")
            # "agent": stages timed but not tagged (profile=False); "tagged": what a profiled run does.
            observer = telemetry.run(tags, profile=arm == "tagged")
            time.sleep(0.2)  # let the agent's sampler settle before timing
            agent_start = {k: v for k, v in thread_cpu_seconds().items() if k not in before}
            arms[arm].append(run_workload(steps, observer, args.steps_per_stage))
            agent_end = thread_cpu_seconds()
            agent_cpu[arm].append(sum(agent_end.get(k, v) - v for k, v in agent_start.items()))
            if rep == 0 and arm == "tagged":
                switch_cost["tagged"] = stage_switch_cost_us(observer)
                switch_cost["untagged_observer"] = stage_switch_cost_us(Telemetry().run(tags))
            telemetry.stop_profiling()
    receiver.stdin.close()  # type: ignore[union-attr]
    summary = json.loads(receiver.stdout.readline())  # type: ignore[union-attr]
    receiver.wait(timeout=10)

    untagged = arms["off"]

    def against_off(arm: str, column: int) -> dict[str, float]:
        return ratios([r[column] for r in arms[arm]], [u[column] for u in untagged])

    result = {
        "note": "vCPUs shared with other jobs: wall time is noisy here, process CPU much less so",
        "torch_threads": torch.get_num_threads(),
        "workload": {
            "steps_per_rep": steps,
            "stage_switches_per_rep": steps // args.steps_per_stage,
            "sample_rate_hz": config.sample_rate,
            "upload_interval_s": config.upload_interval_s,
            "steps_per_stage": args.steps_per_stage,
            "stage_switches_per_second": round(
                steps / args.steps_per_stage / statistics.median([t[0] for t in arms["tagged"]]), 1
            ),
        },
        "seconds": {arm: {"wall": [round(r[0], 4) for r in runs], "process_cpu": [round(r[1], 4) for r in runs],
                          "workload_thread_cpu": [round(r[2], 4) for r in runs]} for arm, runs in arms.items()},
        "wall": {arm: against_off(arm, 0) for arm in ("agent", "tagged")},
        "process_cpu": {arm: against_off(arm, 1) for arm in ("agent", "tagged")},
        "workload_thread_cpu": {arm: against_off(arm, 2) for arm in ("agent", "tagged")},
        "agent_threads_cpu_share_of_wall": {
            arm: round(statistics.median(a / t[0] for a, t in zip(agent_cpu[arm], arms[arm])), 4)
            for arm in agent_cpu
        },
        "stage_switch_us": {k: round(v, 2) for k, v in switch_cost.items()},
        "receiver": summary,
        "goal": "tagged wall ratio <= 1.02",
        "profiling_overhead_ratio": against_off("tagged", 0)["median_pair_ratio"],
    }
    write_results(args.out, result)
    keys = ("wall", "process_cpu", "workload_thread_cpu", "agent_threads_cpu_share_of_wall", "stage_switch_us")
    print(json.dumps({key: result[key] for key in keys}))
    print(f"receiver got {summary['profiles']} profiles, {summary['tagged_samples']} tagged samples")


if __name__ == "__main__":
    main()
