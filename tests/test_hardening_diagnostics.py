"""The leak-measurement snapshot (sonic_guard/telemetry/resources.py) counts what it says it counts, names no
paths, and is off unless SONIC_GUARD_DIAGNOSTICS turns it on."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from sonic_guard.telemetry.resources import (
    ENV_VAR,
    answer_resource_request,
    diagnostics_enabled,
    resource_snapshot,
)


def test_snapshot_counts_tensors_threads_files_and_leftovers(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "segment_001.partial.mp4").write_bytes(b"x")
    (tmp_path / "jobs" / "segment_000_tail.pt.tmp").write_bytes(b"x")
    (tmp_path / "talking_00001.mp4").write_bytes(b"x")
    before = resource_snapshot([tmp_path], trim=True)
    kept = [torch.ones(256, 256) for _ in range(10)]
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, daemon=True)
    worker.start()
    handle = (tmp_path / "open.txt").open("w")
    try:
        after = resource_snapshot([tmp_path])
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
    assert resource_snapshot([tmp_path])["live_tensors"] < after["live_tensors"]


@pytest.mark.parametrize(("value", "enabled"), [
    (None, False), ("", False), ("0", False), ("false", False), ("off", False), ("2", False),
    ("1", True), ("true", True), (" Yes ", True), ("ON", True),
])
def test_the_switch_is_off_unless_set(value: str | None, enabled: bool) -> None:
    environ = {} if value is None else {ENV_VAR: value}
    assert diagnostics_enabled(environ) is enabled


def test_off_by_default_the_route_refuses_without_walking_objects(tmp_path: Path) -> None:
    asked: list[bool] = []

    def folders() -> list[Path]:
        asked.append(True)
        return [tmp_path]

    answer = answer_resource_request({"census": "5"}, folders, environ={})
    assert answer.status == 403
    assert f"{ENV_VAR}=1" in answer.body["fix"] and "live_tensors" not in answer.body
    assert asked == []  # nothing was gathered


def test_on_the_route_answers_with_a_census_on_request(tmp_path: Path) -> None:
    on = {ENV_VAR: "1"}
    kept = torch.ones(4)
    plain = answer_resource_request({}, lambda: [tmp_path], environ=on)
    assert plain.status == 200 and "objects" not in plain.body and plain.body["live_tensors"] >= 1
    del kept
    census = answer_resource_request({"census": "5", "trim": "1"}, lambda: [tmp_path], environ=on)
    assert census.status == 200 and len(census.body["objects"]) == 5
    assert all(isinstance(n, int) and n > 0 for n in census.body["objects"].values())
    refused = answer_resource_request({"census": "lots"}, lambda: [tmp_path], environ=on)
    assert refused.status == 400 and "whole number" in refused.body["error"]
