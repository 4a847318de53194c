"""Every bench writes its results file through here: whole, in one atomic replace, with where it came from.

The `provenance` block (command, versions, machine, date, commit) is what lets a reader trust a figure and what
`tests/test_results_provenance.py` checks in every `bench/results/*.json`. Benches never merge with an older file:
a results file is one run of one bench.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
PROVENANCE_KEYS = ("command", "date_utc", "versions", "machine", "commit")
PACKAGES = ("torch", "diffusers", "transformers", "av", "numpy", "prometheus-client", "pyroscope-io")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _gpu() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "total_bytes": int(props.total_memory), "cuda": torch.version.cuda}


def machine() -> dict[str, Any]:
    """What ran the bench: enough to tell two machines apart and to see a shared, loaded one."""
    import psutil

    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "ram_bytes": int(psutil.virtual_memory().total),
        "load_average": [round(x, 2) for x in os.getloadavg()], "gpu": _gpu(),
    }


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv if argv is None else argv
    script = Path(argv[0])
    shown = script.relative_to(REPO) if script.is_absolute() and script.is_relative_to(REPO) else script
    return {
        "command": shlex.join(["python", str(shown), *argv[1:]]),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), **{p: _version(p) for p in PACKAGES}},
        "machine": machine(),
        "commit": _commit(),
    }


def write_results(path: Path, results: dict[str, Any], *, argv: list[str] | None = None) -> Path:
    """Write `results` with its provenance to `path` in one atomic replace (no half-written file on a crash)."""
    if "provenance" in results:
        raise ValueError("results carry their own 'provenance': it is added here, from this run")
    payload = {"provenance": provenance(argv), **results}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(json.dumps(payload, indent=1, default=str) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
