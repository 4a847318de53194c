"""kill -9 a real ComfyUI server in the middle of a segmented job, start a new one on the same base folder and
queue the same prompt: the finished segments are reused, a segment damaged on disk meanwhile is redone (its
hash no longer matches the manifest), and the video is complete.

Kept short for a shared 2-core machine: 6 s of audio in 2 s segments (4 segments), 128 px, 1 step, no
interpolation, the small random model set.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from comfy_host import ComfyServer, execution_error
from conftest import ALL_NODE_IDS, server_base_dir
from hardening_cases import quick_prompt

SECONDS = 6.0
SEGMENTS = 4  # plan_segments(75 generated frames, 25 per segment, 6 anchor frames)
START_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 300.0


def crash_prompt() -> dict:
    return quick_prompt(duration=SECONDS, segment_seconds=2.0, inference_steps=1, seed=4242,
                        filename_prefix="crash/run")


def _start(base: Path) -> ComfyServer:
    return ComfyServer.start(base, extra_args=["--cache-none"], required_nodes=ALL_NODE_IDS,
                             timeout_s=START_TIMEOUT_S)


@pytest.fixture
def base(tmp_path: Path, tiny_models: Path, speech_wav: Path, portrait_png: Path) -> Path:
    return server_base_dir(tmp_path / "comfy", tiny_models, speech_wav, portrait_png)


@pytest.fixture
def servers() -> Iterator[list[ComfyServer]]:
    """Every server a test starts is stopped, even when the test fails between a kill and a restart."""
    started: list[ComfyServer] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def _done_segments(job_root: Path) -> tuple[Path | None, list[str]]:
    """(job folder, finished segment indices) from the manifest; a manifest being replaced reads as none yet."""
    for manifest in job_root.glob("*/manifest.json"):
        try:
            return manifest.parent, sorted(json.loads(manifest.read_text()).get("done", {}), key=int)
        except (OSError, ValueError):
            continue
    return None, []


def _kill_when_segments_done(server: ComfyServer, job_root: Path, count: int) -> tuple[Path, list[str]]:
    """Queue the prompt, and kill -9 the server's whole process group once `count` segments are finished."""
    server.queue(crash_prompt())
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        job_dir, done = _done_segments(job_root)
        if len(done) >= count:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(30)
            assert len(done) < SEGMENTS, f"the job finished before it could be killed: {done}"
            return job_dir, done
        assert server.process.poll() is None, f"the server died on its own:\n{server.log_tail()}"
        time.sleep(0.05)
    raise AssertionError(f"{count} segments were not finished in {RUN_TIMEOUT_S} s:\n{server.log_tail()}")


def _report(history: dict) -> dict:
    texts = history["outputs"]["4"]["text"]
    return json.loads(texts[1])


def crash_scenario(base: Path, servers: list[ComfyServer]) -> dict:
    """Start a server on `base`, kill -9 it once two segments are finished, damage the second one on disk, start
    a new server on the same folder and queue the same prompt: the figures of what the rerun did (the servers
    it started are appended to `servers`, for the caller to stop)."""
    job_root = base / "output" / "sonic_guard_jobs"
    servers.append(_start(base))
    job_dir, done = _kill_when_segments_done(servers[-1], job_root, count=2)
    # Damage the last finished segment on disk: same size, one byte flipped in the middle.
    damaged = job_dir / f"segment_{int(done[-1]):03d}.mp4"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    intact = len(done) - 1

    servers.append(_start(base))
    server = servers[-1]
    history = server.run(crash_prompt(), timeout_s=RUN_TIMEOUT_S)
    error = execution_error(history)
    log = server.log_text()
    figures: dict = {
        "done_at_kill": len(done), "intact": intact, "error": error,
        "status": history["status"].get("status_str"),
        # Only the intact segments may be reused, each named in the log; the damaged one and later ones redone.
        "reused_logged": [i + 1 for i in range(SEGMENTS) if f"segment {i + 1}/{SEGMENTS} already done" in log],
        "notes": _report(history)["notes"] if error is None else [],
        "leftovers": [p.name for p in (base / "output").rglob("*") if p.is_file()
                      and (".partial" in p.name or p.name.endswith(".tmp"))],
        "segment_files_after": [p.name for p in job_root.rglob("segment_*")],
    }
    if error is None:
        saved = history["outputs"]["4"]["images"][0]
        video_path = base / "output" / saved["subfolder"] / saved["filename"]
        with av.open(str(video_path)) as container:
            figures["fps"] = float(container.streams.video[0].average_rate)
            figures["audio_streams"] = len(container.streams.audio)
            audio = container.streams.audio[0] if container.streams.audio else None
            figures["audio_s"] = float(audio.duration * audio.time_base) if audio is not None else 0.0
            figures["frames"] = sum(1 for _ in container.decode(video=0))
    figures["damaged_redone"] = intact + 1 not in figures["reused_logged"] and any(
        f"segment {intact + 1}/{SEGMENTS} redone" in note and "sha256" in note for note in figures["notes"])
    figures["complete"] = error is None and figures.get("audio_streams") == 1 and figures.get("frames") == round(
        SECONDS * figures.get("fps", 0.0)) and abs(figures.get("audio_s", 0.0) - SECONDS) <= 1 / 25 + 0.05
    figures["reused_ok"] = figures["reused_logged"] == list(range(1, intact + 1)) and any(
        f"{intact} reused" in note for note in figures["notes"])
    return figures


def test_kill_9_mid_job_then_restart_reuses_finished_segments_and_redoes_a_damaged_one(
    base: Path, servers: list[ComfyServer]
) -> None:
    figures = crash_scenario(base, servers)
    assert figures["error"] is None and figures["status"] == "success", figures
    assert figures["reused_ok"], figures  # the intact finished segments were reused, not regenerated
    assert figures["damaged_redone"], figures  # the damaged one was detected by its hash and redone
    assert figures["frames"] == round(SECONDS * figures["fps"]), figures
    assert figures["audio_streams"] == 1 and abs(figures["audio_s"] - SECONDS) <= 1 / figures["fps"] + 0.05, figures
    assert figures["complete"], figures
    # Nothing half-written is left in the output folder, and the job's segment files are gone after the stitch.
    assert figures["leftovers"] == [] and figures["segment_files_after"] == [], figures
