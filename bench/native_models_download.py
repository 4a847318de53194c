"""`download_resume_ok` for bench/results/native_models.json: an interrupted model download continues in the next
run with a Range request from the byte it stopped at (the real huggingface_hub client against the loopback hub of
tests/hub_server.py, no network). bench_native_models.py calls `check_download_resume()`; run this file alone to
see the answer (it writes no results file: native_models.json is that bench's).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _hub_server():
    # tests/ is not a package: load the fake hub by path, as the tests' pythonpath would.
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location("sonic_guard_hub_server", REPO / "tests" / "hub_server.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def check_download_resume() -> bool:
    """True when a download cut mid-file (and the hub gone) resumes in the next run from the kept byte, whole."""
    return bool(_hub_server().check_download_resume())


if __name__ == "__main__":
    print(f"download_resume_ok = {check_download_resume()}")
