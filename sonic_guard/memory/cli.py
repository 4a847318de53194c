"""Print the run history: `python -m sonic_guard.memory.cli --db PATH [--last N] [--json]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from .history import RunHistory

GIB = 1024**3


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def render(history: RunHistory, last: int) -> str:
    """Human-readable table of the last runs plus the current calibrations."""
    lines = [f"{'size':>10} {'steps':>5} {'cfg':>3} {'pred GiB':>8} {'meas GiB':>8} {'free GiB':>8} "
             f"{'retries':>7}  outcome  levers / downgrades"]
    for run in history.recent(last):
        size = f"{run.plan.get('width')}x{run.plan.get('height')}"
        changes = ", ".join([*run.levers_applied, *run.downgrades]) or "-"
        lines.append(f"{size:>10} {run.plan.get('inference_steps', '-'):>5} {run.plan.get('cfg_batch', '-'):>3} "
                     f"{_gib(run.predicted_peak_bytes):>8} {_gib(run.measured_peak_bytes):>8} "
                     f"{_gib(run.free_before_bytes):>8} {run.retries:>7}  {run.outcome:<8} {changes}")
    calibration = history.calibration()
    times = history.time_model()
    lines.append(f"allocator: fixed {calibration.fixed_bytes / 2**20:.0f} MiB, fragmentation "
                 f"{calibration.fragmentation:.1%} ({calibration.source})")
    lines.append(f"time model: {times.per_call_s:.3f} s/call + {times.per_pixel_frame_s:.3e} s/pixel-frame "
                 f"({times.source})")
    lines.append(f"{history.count()} runs stored (max {history.max_runs}) in {history.path}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sonic_guard.memory.cli", description=__doc__)
    parser.add_argument("--db", required=True, type=Path, help="history SQLite file")
    parser.add_argument("--last", type=int, default=20, help="how many recent runs to show")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if not args.db.exists():
        sys.stderr.write(f"no history at {args.db}: it is created by the first recorded run\n")
        return 2
    history = RunHistory(args.db)
    if args.json:
        payload = {
            "runs": [run.to_dict() for run in history.recent(args.last)],
            "calibration": asdict(history.calibration()),
            "time_model": asdict(history.time_model()),
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        sys.stdout.write(render(history, args.last))
    return 0


if __name__ == "__main__":
    sys.exit(main())
