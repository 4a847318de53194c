"""A batch over two real ComfyUI servers, one of which dies in the middle of a job and comes back; then a rerun."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import comfy_host
import pytest
from comfy_host import REPO, ComfyServer
from conftest import ALL_NODE_IDS, speak

from sonic_guard.client import BatchRunner, ComfyClient, Overrides, jobs_from_folder, load_workflow

BASIC = REPO / "workflows" / "sonic_basic_api.json"
# The small model, 128 px, 2 steps, no frame interpolation: the quickest real generation.
SMALL_RUN = Overrides(min_resolution=128, steps=2, sets=(
    ("1", "model_folder", "tiny-sonic"), ("1", "load_rife", False), ("4", "interpolation", "none")))
SMALL_RUN_ARGS = ["--min-resolution", "128", "--steps", "2", "--set", "1.model_folder=tiny-sonic",
                  "--set", "1.load_rife=false", "--set", "4.interpolation=none"]


def start_server(base: Path, tiny_models: Path) -> ComfyServer:
    if not (base / "models" / "sonic" / "tiny-sonic").exists():
        shutil.copytree(tiny_models, base / "models" / "sonic" / "tiny-sonic")
    return ComfyServer.start(base, extra_args=["--cache-none"], required_nodes=ALL_NODE_IDS)


def stream_kinds(path: Path) -> list[str]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
                         check=True, capture_output=True, text=True)
    return sorted(stream["codec_type"] for stream in json.loads(out.stdout)["streams"])


def test_batch_survives_a_server_restart_and_a_rerun_skips_everything(
    comfy_server: ComfyServer, tiny_models: Path, portrait_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for name, text in (("a", "Hi."), ("b", "Hello."), ("c", "Hey.")):  # short speech: short generations
        shutil.copy(portrait_png, pairs / f"{name}.png")
        speak(pairs / f"{name}.wav", text)
    server_b = start_server(tmp_path / "server_b", tiny_models)
    servers = {"b": server_b}
    restart_done = threading.Event()

    def restart_b() -> None:
        try:
            servers["b"] = start_server(server_b.base, tiny_models)
        finally:
            restart_done.set()

    events: list[tuple[str, dict]] = []

    def on_event(kind: str, info: dict) -> None:
        events.append((kind, info))
        # Kill server B while it runs job b (the prompt is queued there), then bring it back on the same port.
        if kind == "queued" and info["job"] == "b" and info["server"] == server_b.url and not restart_done.is_set():
            server_b.stop()
            monkeypatch.setattr(comfy_host, "free_port", lambda: server_b.port)
            threading.Thread(target=restart_b, daemon=True).start()

    out = tmp_path / "out"
    # B first: equal CPU servers are used in the order given, so job a and job b go to B.
    runner = BatchRunner([ComfyClient(server_b.url), ComfyClient(comfy_server.url)], load_workflow(BASIC),
                         SMALL_RUN, out, wait_for_server_s=120, progress_stream=io.StringIO(), on_event=on_event)
    try:
        outcome = runner.run(jobs_from_folder(pairs))
        assert restart_done.wait(180), "server B did not come back"
        assert servers["b"] is not server_b and ComfyClient(server_b.url).health()["queue_length"] == 0
    finally:
        restart_done.wait(180)
        servers["b"].stop()
        server_b.stop()

    assert outcome.done == ["a", "b", "c"] and not outcome.failed, outcome.failed
    queued = [(info["job"], info["server"]) for kind, info in events if kind == "queued"]
    assert queued[:3] == [("a", server_b.url), ("b", server_b.url), ("b", comfy_server.url)], queued
    retries = [info for kind, info in events if kind == "retry"]
    assert len(retries) == 1 and retries[0]["job"] == "b" and "cannot be reached" in retries[0]["error"]

    lines = [json.loads(line) for line in (out / "sonic_batch_state.jsonl").read_text().splitlines()]
    assert [(line["name"], line["status"]) for line in lines] == [
        ("a", "done"), ("b", "failed"), ("b", "done"), ("c", "done")]
    assert lines[1]["retryable"] is True and lines[1]["server"] == server_b.url
    for line in (lines[0], lines[2], lines[3]):
        [video] = [out / name for name in line["outputs"] if name.endswith(".mp4")]
        assert video.parent == out / line["name"]
        assert stream_kinds(video) == ["audio", "video"]

    # A rerun (from the command line, with the pairs as a CSV now) finds every job finished: nothing is queued.
    (pairs / "pairs.csv").write_text("image,audio,name\n" + "".join(f"{n}.png,{n}.wav,{n}\n" for n in "abc"))
    rerun = subprocess.run(
        [sys.executable, "-m", "sonic_guard.client", "--batch", str(pairs / "pairs.csv"), "--out", str(out),
         "--server", comfy_server.url, *SMALL_RUN_ARGS],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "batch: 0 done, 3 skipped, 0 failed" in rerun.stderr, rerun.stderr
    assert len((out / "sonic_batch_state.jsonl").read_text().splitlines()) == len(lines)
