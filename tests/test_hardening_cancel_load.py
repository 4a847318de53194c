"""Through a real ComfyUI server: /interrupt stops a run at the next window boundary and keeps the finished
segments; a burst of /sonic/metrics and /sonic/health requests during a run is answered and the run is unhurt."""

from __future__ import annotations

import json
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import websocket
from comfy_host import ComfyServer
from hardening_cases import execution_error_of, quick_prompt, run_prompt, server_resources, wait_finished

BURST_REQUESTS = 120
BURST_WORKERS = 6


def _follow(server: ComfyServer, prompt: dict, on_progress, timeout_s: float = 600.0) -> tuple[str, list]:
    """Queue `prompt`, call on_progress(events, prompt_id) at each progress event; (prompt id, events)."""
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={server.client_id}", timeout=2)
    events: list[tuple[float, dict]] = []
    try:
        status, answer = server.post_json("/prompt", {"prompt": prompt, "client_id": server.client_id})
        assert status == 200 and not answer.get("node_errors"), answer
        prompt_id = answer["prompt_id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                raw = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            if not isinstance(raw, str):
                continue
            message = json.loads(raw)
            data = message.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            events.append((time.monotonic(), message))
            if message["type"] == "progress":
                on_progress(events, prompt_id)
            if message["type"] in ("execution_error", "execution_interrupted", "execution_success"):
                break
    finally:
        ws.close()
    return prompt_id, events


def _segment_files(job_root: Path) -> list[Path]:
    return sorted(job_root.rglob("segment_*.mp4")) if job_root.exists() else []


def test_interrupt_stops_at_a_window_boundary_and_keeps_finished_segments(comfy_server: ComfyServer) -> None:
    job_root = comfy_server.base / "output" / "sonic_guard_jobs"
    before = set(_segment_files(job_root))
    # 8 s in 2 s segments, 4 steps: long enough to interrupt inside the second segment.
    prompt = quick_prompt(duration=8.0, segment_seconds=2.0, inference_steps=4, seed=314)
    interrupted_at: list[float] = []

    def interrupt_in_second_segment(events: list, prompt_id: str) -> None:
        finished = [p for p in _segment_files(job_root) if p not in before and ".partial" not in p.name]
        if finished and not interrupted_at:
            interrupted_at.append(time.monotonic())
            comfy_server.post_json("/interrupt", {"prompt_id": prompt_id})

    prompt_id, events = _follow(comfy_server, prompt, interrupt_in_second_segment)
    assert interrupted_at, "the run finished before a segment was done; no interrupt was sent"
    end_time, last = events[-1]
    assert last["type"] == "execution_interrupted", last
    history = wait_finished(comfy_server, prompt_id, 60)
    assert history["status"]["status_str"] == "error"
    # Stopped at the next window boundary: within a few window times (noisy shared machine).
    stamps = [t for t, m in events if m["type"] == "progress" and t < interrupted_at[0]]
    window_s = max(b - a for a, b in zip(stamps, stamps[1:], strict=False)) if len(stamps) > 1 else 10.0
    latency = end_time - interrupted_at[0]
    assert latency <= 3 * window_s + 5.0, f"stopped {latency:.1f} s after /interrupt (window ~{window_s:.1f} s)"
    kept = [p for p in _segment_files(job_root) if p not in before]
    assert any(".partial" not in p.name for p in kept), "the finished segment was not kept"
    assert not [p for p in kept if ".partial" in p.name], "a half-written segment was left behind"
    # The server goes on: a valid run succeeds, and nothing of the cancelled run stays alive.
    snapshot = server_resources(comfy_server)
    status, answer, after = run_prompt(comfy_server, quick_prompt())
    assert after is not None and execution_error_of(after) is None, answer or execution_error_of(after)
    later = server_resources(comfy_server)
    assert later["os_threads"] <= snapshot["os_threads"] + 2, (snapshot, later)
    assert later["temp_files"] == 0, later


def _get(server: ComfyServer, path: str) -> tuple[int, float]:
    started = time.monotonic()
    try:
        with server.request(path, timeout=30) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as error:  # /sonic/health says 503 when degraded: still an answer
        body, status = error.read(), error.code
    assert body, f"{path} answered {status} with no body"
    return status, time.monotonic() - started


def test_metrics_and_health_burst_during_a_run(comfy_server: ComfyServer) -> None:
    prompt = quick_prompt(duration=2.0, inference_steps=2, seed=7)
    answers: list[tuple[int, float]] = []
    fired: list[bool] = []

    def burst(events: list, prompt_id: str) -> None:
        if fired:
            return
        fired.append(True)
        paths = ["/sonic/metrics", "/sonic/health"] * (BURST_REQUESTS // 2)
        with ThreadPoolExecutor(max_workers=BURST_WORKERS) as pool:
            answers.extend(pool.map(lambda path: _get(comfy_server, path), paths))

    prompt_id, events = _follow(comfy_server, prompt, burst)
    assert fired, "no progress event came, so no burst was sent during the run"
    assert len(answers) == BURST_REQUESTS
    assert all(status in (200, 503) for status, _ in answers), sorted({s for s, _ in answers})
    history = wait_finished(comfy_server, prompt_id, 60)
    assert execution_error_of(history) is None, execution_error_of(history)
    assert history["status"]["status_str"] == "success"
    worst = max(seconds for _, seconds in answers)
    assert worst < 30, f"slowest answer took {worst:.1f} s"
