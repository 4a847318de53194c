"""Overhead of profiling: the same CPU/torch workload with no agent vs under stage tags with the pyroscope-io
agent running and pushing to a loopback receiver (in its own process, so decoding does not compete).

Repetitions alternate A B B A ... in one run to cancel drift on a shared machine. Reported: tagged / untagged
ratios of wall time, of the workload thread's CPU time (what the prompt thread pays: its wall time when cores
are free) and of process CPU time (which adds the agent's own threads), plus two direct measures, because A/B
wall ratios are noisy on a small shared machine: the CPU the agent's threads used (Linux /proc) and the cost of
one stage switch with tags. Goal: <= 2 % wall.

    .venv/bin/python bench/bench_profiling_overhead.py [--pairs N] [--seconds-per-rep S] [--steps-per-stage K]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from importlib import metadata
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sonic_guard.telemetry import ProfilingConfig, Telemetry, run_tags  # noqa: E402

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


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) per thread id of this process, from /proc (empty where there is none)."""
    out: dict[str, float] = {}
    task_dir = Path("/proc/self/task")
    if not task_dir.is_dir():
        return out
    ticks = os.sysconf("SC_CLK_TCK")
    for task in task_dir.iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[task.name] = (int(fields[11]) + int(fields[12])) / ticks
    return out


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
    parser.add_argument("--sample-rate", type=int, default=100, help="pyroscope sample rate in Hz")
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

    untagged: list[tuple[float, float, float]] = []
    tagged: list[tuple[float, float, float]] = []
    agent_cpu: list[float] = []
    switch_cost: dict[str, float] = {}
    for pair in range(args.pairs):
        for which in ("off", "on") if pair % 2 == 0 else ("on", "off"):
            if which == "off":
                untagged.append(run_workload(steps, None, args.steps_per_stage))
                continue
            before = thread_cpu_seconds()
            telemetry = Telemetry()
            status = telemetry.start_profiling(config)
            if not status.active:
                raise SystemExit(f"profiling did not start: {status.message}")
            observer = telemetry.run(tags, profile=True)
            time.sleep(0.2)  # let the agent's sampler settle before timing
            agent_start = {k: v for k, v in thread_cpu_seconds().items() if k not in before}
            tagged.append(run_workload(steps, observer, args.steps_per_stage))
            agent_end = thread_cpu_seconds()
            agent_cpu.append(sum(agent_end.get(k, v) - v for k, v in agent_start.items()))
            if pair == 0:
                switch_cost["tagged"] = stage_switch_cost_us(observer)
                switch_cost["untagged_observer"] = stage_switch_cost_us(Telemetry().run(tags))
            telemetry.stop_profiling()
    receiver.stdin.close()  # type: ignore[union-attr]
    summary = json.loads(receiver.stdout.readline())  # type: ignore[union-attr]
    receiver.wait(timeout=10)

    result = {
        "command": " ".join([".venv/bin/python", "bench/bench_profiling_overhead.py", *sys.argv[1:]]),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "note": "vCPUs shared with other jobs: wall time is noisy here, process CPU much less so",
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "pyroscope_io": metadata.version("pyroscope-io"),
        },
        "workload": {
            "steps_per_rep": steps,
            "stage_switches_per_rep": steps // args.steps_per_stage,
            "sample_rate_hz": config.sample_rate,
            "upload_interval_s": config.upload_interval_s,
            "steps_per_stage": args.steps_per_stage,
            "stage_switches_per_second": round(
                steps / args.steps_per_stage / statistics.median([t[0] for t in tagged]), 1
            ),
        },
        "untagged_wall_s": [round(u[0], 4) for u in untagged],
        "tagged_wall_s": [round(t[0], 4) for t in tagged],
        "untagged_cpu_s": [round(u[1], 4) for u in untagged],
        "tagged_cpu_s": [round(t[1], 4) for t in tagged],
        "untagged_thread_cpu_s": [round(u[2], 4) for u in untagged],
        "tagged_thread_cpu_s": [round(t[2], 4) for t in tagged],
        "wall": ratios([t[0] for t in tagged], [u[0] for u in untagged]),
        "process_cpu": ratios([t[1] for t in tagged], [u[1] for u in untagged]),
        "workload_thread_cpu": ratios([t[2] for t in tagged], [u[2] for u in untagged]),
        "agent_threads_cpu_share_of_wall": round(statistics.median(a / t[0] for a, t in zip(agent_cpu, tagged)), 4),
        "stage_switch_us": {k: round(v, 2) for k, v in switch_cost.items()},
        "receiver": summary,
        "goal": "wall ratio <= 1.02",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    keys = ("wall", "process_cpu", "workload_thread_cpu", "agent_threads_cpu_share_of_wall", "stage_switch_us")
    print(json.dumps({key: result[key] for key in keys}))
    print(
        f"receiver got {summary['profiles']} profiles, {summary['tagged_samples']} tagged samples; "
        f"load average {result['machine']['load_average_at_end']}"
    )


if __name__ == "__main__":
    main()
