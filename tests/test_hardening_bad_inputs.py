"""Through a real ComfyUI server: bad inputs are refused with actionable errors, fail fast, leave the server
serving, and the next valid run succeeds with memory, threads and files back to where they were."""

from __future__ import annotations

import time

import pytest
from comfy_host import ComfyServer
from hardening_cases import CASES, Case, quick_prompt
from hardening_server import evaluate, execution_error_of, run_prompt, server_resources

REFUSED = [case for case in CASES if not case.accepted]
# Each refused input must fail before sampling starts: seconds, not minutes, even on a busy machine.
FAIL_FAST_S = 60.0
RSS_TOLERANCE = 0.05  # after ~40 refused inputs and a valid run (the soak test holds 2 %)
TENSOR_SLACK = 64
TENSOR_BYTES_SLACK = 1 << 20


def _valid_run(server: ComfyServer) -> dict:
    status, answer, history = run_prompt(server, quick_prompt())
    assert history is not None, answer
    assert execution_error_of(history) is None, execution_error_of(history)
    assert history["status"]["status_str"] == "success"
    return history


@pytest.fixture(scope="module")
def baseline(comfy_server: ComfyServer) -> dict:
    """Resources after two valid runs: imports, allocator pools and caches are warm by then."""
    _valid_run(comfy_server)
    _valid_run(comfy_server)
    return server_resources(comfy_server)


def test_enough_bad_inputs_are_covered() -> None:
    categories = {case.category for case in REFUSED}
    assert len(CASES) >= 25 and categories >= {"image", "audio", "parameters", "checkpoint", "path"}


@pytest.mark.parametrize("case", REFUSED, ids=[case.name for case in REFUSED])
def test_bad_input_is_refused_with_an_actionable_error(comfy_server: ComfyServer, baseline: dict,
                                                        case: Case) -> None:
    outcome = evaluate(comfy_server, case, timeout_s=FAIL_FAST_S * 3)
    assert outcome.server_alive
    assert outcome.stage in ("queue", "execution"), f"{case.name} was accepted: {outcome}"
    assert outcome.handled, outcome
    assert outcome.seconds < FAIL_FAST_S, f"{case.name} took {outcome.seconds:.1f} s to be refused"


def test_checkpoints_are_read_with_weights_only(comfy_server: ComfyServer, baseline: dict) -> None:
    case = next(c for c in CASES if c.name == "checkpoint_code_pickle")
    outcome = evaluate(comfy_server, case)
    assert outcome.exception_type == "CheckpointError", outcome
    marker = comfy_server.base / "models" / "sonic" / "hard-code-pickle" / "Sonic" / "pickle_code_ran"
    assert not marker.exists(), "unpickling ran code: a checkpoint was loaded without weights_only=True"


def test_after_bad_inputs_the_server_runs_and_returns_to_baseline(comfy_server: ComfyServer,
                                                                  baseline: dict) -> None:
    started = time.monotonic()
    _valid_run(comfy_server)
    assert time.monotonic() - started < 600
    after = server_resources(comfy_server)
    growth = after["rss_bytes"] / baseline["rss_bytes"] - 1
    assert growth <= RSS_TOLERANCE, f"RSS grew {growth:.1%}: {baseline} -> {after}"
    # One lazily started pool thread is not a leak; a thread per refused input (40 of them) would be.
    assert after["os_threads"] <= baseline["os_threads"] + 2, (baseline, after)
    # Likewise a lazily opened database or log (the shared server also serves other tests); a file per refused
    # input would be 40.
    assert after["open_files"] <= baseline["open_files"] + 2, (baseline, after)
    assert after["temp_files"] == 0, after
    if after["live_tensors"] is not None:
        # A few small tensors may join the estimator's per-shape cache (bounded by the shapes seen); a leak of
        # what the refused inputs carried would be images, audio or weights: megabytes.
        assert after["live_tensors"] <= baseline["live_tensors"] + TENSOR_SLACK, (baseline, after)
        assert after["live_tensor_bytes"] <= baseline["live_tensor_bytes"] + TENSOR_BYTES_SLACK, (baseline, after)


def test_resource_route_counts_object_types_on_request(comfy_server: ComfyServer) -> None:
    import urllib.error

    snapshot = comfy_server.get_json("/sonic/debug/resources?census=5", timeout=60)
    assert len(snapshot["objects"]) == 5 and all(isinstance(n, int) and n > 0 for n in snapshot["objects"].values())
    assert "objects" not in comfy_server.get_json("/sonic/debug/resources", timeout=60)
    with pytest.raises(urllib.error.HTTPError) as refused:
        comfy_server.get_json("/sonic/debug/resources?census=lots", timeout=60)
    assert refused.value.code == 400 and b"whole number" in refused.value.read()
