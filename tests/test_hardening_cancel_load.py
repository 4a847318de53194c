"""Through a real ComfyUI server: /interrupt stops a run at the next window boundary and keeps the finished
segments; a burst of /sonic/metrics and /sonic/health requests during a run is answered and the run is unhurt."""

from __future__ import annotations

from comfy_host import ComfyServer
from hardening_cases import quick_prompt
from hardening_server import (
    execution_error_of,
    follow_prompt,
    interrupt_after_first_segment,
    request_burst,
    run_prompt,
    server_resources,
    wait_finished,
)

BURST_REQUESTS = 120
BURST_WORKERS = 6


def test_interrupt_stops_at_a_window_boundary_and_keeps_finished_segments(comfy_server: ComfyServer) -> None:
    figures = interrupt_after_first_segment(comfy_server)
    assert figures["interrupt_sent"], f"the run ended before a segment was done; no interrupt was sent: {figures}"
    assert figures["last_event"] == "execution_interrupted", figures
    history = wait_finished(comfy_server, figures["prompt_id"], 60)
    assert history["status"]["status_str"] == "error"
    # Stopped at the next window boundary: within a few window times (noisy shared machine).
    window_s = figures["window_s"] or 10.0
    assert figures["latency_s"] <= 3 * window_s + 5.0, figures
    assert figures["segments_kept"] >= 1, f"the finished segment was not kept: {figures}"
    assert figures["partial_left"] == 0, f"a half-written segment was left behind: {figures}"
    # The server goes on: a valid run succeeds, and nothing of the cancelled run stays alive.
    snapshot = server_resources(comfy_server)
    _, answer, after = run_prompt(comfy_server, quick_prompt())
    assert after is not None and execution_error_of(after) is None, answer or execution_error_of(after)
    later = server_resources(comfy_server)
    assert later["os_threads"] <= snapshot["os_threads"] + 2, (snapshot, later)
    assert later["temp_files"] == 0, later


def test_metrics_and_health_burst_during_a_run(comfy_server: ComfyServer) -> None:
    answers: list[tuple[int, float]] = []

    def burst(events: list, prompt_id: str) -> None:
        if not answers:
            answers.extend(request_burst(comfy_server, BURST_REQUESTS, BURST_WORKERS))

    prompt_id, events = follow_prompt(comfy_server, quick_prompt(duration=2.0, inference_steps=2, seed=7), burst)
    assert answers, "no progress event came, so no burst was sent during the run"
    assert len(answers) == BURST_REQUESTS
    assert all(status in (200, 503) for status, _ in answers), sorted({s for s, _ in answers})
    history = wait_finished(comfy_server, prompt_id, 60)
    assert execution_error_of(history) is None, execution_error_of(history)
    assert history["status"]["status_str"] == "success"
    worst = max(seconds for _, seconds in answers)
    assert worst < 30, f"slowest answer took {worst:.1f} s"
