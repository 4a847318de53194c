"""The leak-measurement snapshot (nodes/diagnostics.py) counts what it says it counts, and names no paths."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import torch
from comfy_host import REPO


def _diagnostics():
    # nodes/__init__.py needs ComfyUI; diagnostics.py does not, so load it by path.
    spec = importlib.util.spec_from_file_location("sonic_guard_diagnostics", REPO / "nodes" / "diagnostics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_snapshot_counts_tensors_threads_files_and_leftovers(tmp_path: Path) -> None:
    diagnostics = _diagnostics()
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "segment_001.partial.mp4").write_bytes(b"x")
    (tmp_path / "jobs" / "segment_000_tail.pt.tmp").write_bytes(b"x")
    (tmp_path / "talking_00001.mp4").write_bytes(b"x")
    before = diagnostics.resource_snapshot([tmp_path], trim=True)
    kept = [torch.ones(256, 256) for _ in range(10)]
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, daemon=True)
    worker.start()
    handle = (tmp_path / "open.txt").open("w")
    try:
        after = diagnostics.resource_snapshot([tmp_path])
    finally:
        handle.close()
        stop.set()
        worker.join()
    assert before["temp_files"] == 2
    assert after["live_tensors"] >= before["live_tensors"] + len(kept)
    assert after["live_tensor_bytes"] >= before["live_tensor_bytes"] + 10 * 256 * 256 * 4
    assert after["threads"] == before["threads"] + 1
    assert after["os_threads"] >= before["os_threads"] + 1
    assert after["open_files"] >= before["open_files"] + 1
    assert before["rss_bytes"] > 0
    assert str(tmp_path) not in json.dumps(after)
    del kept
    assert diagnostics.resource_snapshot([tmp_path])["live_tensors"] < after["live_tensors"]
