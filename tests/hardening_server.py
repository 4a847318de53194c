"""Running hardening cases on a real ComfyUI server and judging the answers; resources of the server process;
following a run on the websocket, interrupting it, and bursts of requests to the pack's routes.

A case is handled when it is refused at queue time with a clear message, or fails in execution with one of our
exception types whose message says what was wrong, what was expected and how to fix it; an "accepted" case is
handled when it runs to a video. The server must answer afterwards in every case.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
from comfy_host import ComfyServer, execution_error
from hardening_cases import Case, quick_prompt

OUR_ERRORS = ("SonicGuardError", "BadInputError", "BadAudioError", "BadImageError", "NoFaceError",
              "UnsafePathError", "CheckpointError", "MemoryPlanError", "OutOfMemoryAfterRetriesError",
              "DiskFullError")


# --- running and judging -------------------------------------------------------------------------------------
@dataclass
class Outcome:
    case: str
    category: str
    stage: str  # "queue" (refused by validation) | "execution" (failed while running) | "success"
    handled: bool
    message: str
    exception_type: str = ""
    seconds: float = 0.0
    server_alive: bool = True


def queue_message(answer: dict) -> str:
    parts = [answer.get("error", {}).get("message", ""), answer.get("error", {}).get("details", "")]
    for node in answer.get("node_errors", {}).values():
        parts += [f"{e.get('message', '')}: {e.get('details', '')}" for e in node.get("errors", [])]
    return " | ".join(p for p in parts if p)


def is_actionable(message: str) -> bool:
    return "Expected:" in message and "Fix:" in message


def wait_finished(server: ComfyServer, prompt_id: str, timeout_s: float) -> dict:
    return server.wait_history(prompt_id, timeout_s)


execution_error_of = execution_error


def server_alive(server: ComfyServer) -> bool:
    return server.process.poll() is None and "system" in server.get_json("/system_stats", timeout=10)


def run_prompt(server: ComfyServer, prompt: dict, timeout_s: float = 300.0) -> tuple[int, dict, dict | None]:
    """(queue status, queue answer, history or None when refused)."""
    status, answer = server.post_json("/prompt", {"prompt": prompt, "client_id": server.client_id})
    if status != 200 or answer.get("node_errors"):
        return status, answer, None
    return status, answer, wait_finished(server, answer["prompt_id"], timeout_s)


def evaluate(server: ComfyServer, case: Case, timeout_s: float = 300.0) -> Outcome:
    prompt = case.build(server.base)
    started = time.monotonic()
    status, answer, history = run_prompt(server, prompt, timeout_s)
    seconds = time.monotonic() - started
    alive = server_alive(server)
    if history is None:
        message = queue_message(answer)
        # ComfyUI's range checks name the input and the limit; our own validators add Expected/Fix.
        clear = bool(message) and (is_actionable(message) or "max" in message or "min" in message
                                   or "not in list" in message)
        return Outcome(case.name, case.category, "queue", clear and not case.accepted and alive, message,
                       seconds=seconds, server_alive=alive)
    error = execution_error_of(history)
    if error is None:
        ok = history["status"].get("status_str") == "success"
        return Outcome(case.name, case.category, "success", case.accepted and ok and alive, "",
                       seconds=seconds, server_alive=alive)
    kind = str(error.get("exception_type", ""))
    message = str(error.get("exception_message", ""))
    ours = kind.rsplit(".", 1)[-1] in OUR_ERRORS
    return Outcome(case.name, case.category, "execution", ours and is_actionable(message) and alive, message,
                   exception_type=kind.rsplit(".", 1)[-1], seconds=seconds, server_alive=alive)


# --- resources of the server process -------------------------------------------------------------------------
_TEMPORARY_MARKERS = (".tmp", ".partial.")


def _thread_count(process: psutil.Process) -> int:
    time.sleep(0.2)
    return process.num_threads()


def _outside_resources(server: ComfyServer) -> dict:
    """The same figures read from outside the process (psutil), when the diagnostics route is not wired."""
    process = psutil.Process(server.process.pid)
    temp = sum(any(m in name for m in _TEMPORARY_MARKERS)
               for _, _, files in os.walk(server.base / "output") for name in files)
    # Short-lived threads (a request being served, a subprocess reader) come and go: the least of a few reads
    # is the number the process keeps.
    threads = min(_thread_count(process) for _ in range(5))
    open_files = process.num_fds() if hasattr(process, "num_fds") else process.num_handles()
    return {"rss_bytes": process.memory_info().rss, "os_threads": threads, "open_files": open_files,
            "temp_files": temp, "live_tensors": None, "threads": None, "gpu": None, "source": "psutil"}


def server_resources(server: ComfyServer) -> dict:
    """GET /sonic/debug/resources?trim=1 (live tensors included), else psutil figures without tensor counts when
    the route is not wired (404). A server started without SONIC_GUARD_DIAGNOSTICS=1 answers 403: an error here,
    not a silent loss of the tensor counts."""
    import urllib.error

    try:
        snapshot = server.get_json("/sonic/debug/resources?trim=1", timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 403:
            raise RuntimeError(f"the server's resource route is off: {error.read().decode(errors='replace')}") \
                from error
        if error.code != 404:
            raise
        return _outside_resources(server)
    snapshot["source"] = "route"
    return snapshot


# --- following a run on the websocket ------------------------------------------------------------------------
def follow_prompt(server: ComfyServer, prompt: dict, on_progress: Callable[[list, str], None],
                  timeout_s: float = 600.0) -> tuple[str, list[tuple[float, dict]]]:
    """Queue `prompt` and read /ws until it ends, calling on_progress(events, prompt_id) at each progress event.

    Returns the prompt id and every (monotonic time, message) of this prompt."""
    events: list[tuple[float, dict]] = []

    def record(prompt_id: str, message: dict) -> None:
        events.append((time.monotonic(), message))
        if message["type"] == "progress":
            on_progress(events, prompt_id)

    prompt_id, _ = server.follow(prompt, timeout_s, on_message=record)
    return prompt_id, events


def segment_files(job_root: Path) -> list[Path]:
    return sorted(job_root.rglob("segment_*.mp4")) if job_root.exists() else []


def cancel_prompt() -> dict:
    """8 s in 2 s segments, 4 steps: long enough to interrupt inside the second segment."""
    return quick_prompt(duration=8.0, segment_seconds=2.0, inference_steps=4, seed=314)


def interrupt_after_first_segment(server: ComfyServer) -> dict:
    """Run cancel_prompt, POST /interrupt once a segment is finished; the figures of what happened."""
    job_root = server.base / "output" / "sonic_guard_jobs"
    before = set(segment_files(job_root))
    sent: list[float] = []

    def interrupt(events: list, prompt_id: str) -> None:
        finished = [p for p in segment_files(job_root) if p not in before and ".partial" not in p.name]
        if finished and not sent:
            sent.append(time.monotonic())
            server.post_json("/interrupt", {"prompt_id": prompt_id})

    prompt_id, events = follow_prompt(server, cancel_prompt(), interrupt)
    stamps = [t for t, m in events if m["type"] == "progress" and (not sent or t < sent[0])]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    kept = [p for p in segment_files(job_root) if p not in before]
    return {
        "prompt_id": prompt_id, "interrupt_sent": bool(sent), "last_event": events[-1][1]["type"],
        "latency_s": events[-1][0] - sent[0] if sent else None, "window_s": max(gaps) if gaps else None,
        "segments_kept": sum(".partial" not in p.name for p in kept),
        "partial_left": sum(".partial" in p.name for p in kept),
    }


def request_burst(server: ComfyServer, count: int, workers: int) -> list[tuple[int, float]]:
    """`count` GETs alternating /sonic/metrics and /sonic/health from `workers` threads: (status, seconds)."""
    import urllib.error
    from concurrent.futures import ThreadPoolExecutor

    def get(path: str) -> tuple[int, float]:
        started = time.monotonic()
        try:
            with server.request(path, timeout=30) as response:
                body, status = response.read(), response.status
        except urllib.error.HTTPError as error:  # /sonic/health says 503 when degraded: still an answer
            body, status = error.read(), error.code
        return (status if body else -1), time.monotonic() - started

    paths = ["/sonic/metrics", "/sonic/health"] * (count // 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(get, paths))
