"""Profiling with the real pyroscope-io agent pushing to a loopback receiver.

pyroscope-io keeps one agent per process, and a shutdown stuck on a silent server stays stuck, so every
scenario runs in its own Python process (this file run as a script); the test reads what it printed and also
times how long the process takes to exit after its last line, which checks that exit is bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("preprocess", "audio_features", "sampling", "decode", "interpolation", "encode")
USER_TAGS = {"team": "vision", "gpu_pool": "a100"}
STOP_TIMEOUT_S = 2.0


def _python_work(seconds: float) -> int:
    """Pure-Python work for about `seconds` of wall time."""
    end = time.perf_counter() + seconds
    total = 0
    while time.perf_counter() < end:
        total += sum(range(200))
    return total


def marker_nested_work(seconds: float) -> int:
    return _python_work(seconds)


def marker_after_work(seconds: float) -> int:
    return _python_work(seconds)


def _fixed_work(iterations: int) -> int:
    total = 0
    for _ in range(iterations):
        total += sum(range(200))
    return total


def scenario(mode: str) -> dict:
    """Runs in a child process: start profiling against a receiver in `mode`, run tagged stages, stop."""
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from pyroscope_receiver import PyroscopeReceiver, free_port_refused

    from sonic_guard.telemetry import ProfilingConfig, Telemetry, run_tags

    rx = PyroscopeReceiver("normal" if mode == "closed" else mode).__enter__()
    address = free_port_refused() if mode == "closed" else rx.address
    config = ProfilingConfig(server_address=address, upload_interval_s=1, stop_timeout_s=STOP_TIMEOUT_S)
    telemetry = Telemetry()
    out: dict = {"start": telemetry.start_profiling(config).state}
    out["start_same"] = telemetry.start_profiling(config).state
    other = ProfilingConfig(server_address=address, application_name="other_app")
    out["start_other"] = telemetry.start_profiling(other).state

    if mode == "normal":
        import torch  # noqa: F401 - imported before timing anything (slow on a busy machine)
    iterations = 200_000
    t0 = time.perf_counter()
    _fixed_work(iterations)
    out["untagged_s"] = time.perf_counter() - t0
    tags = run_tags(duration_s=7.3, width=512, height=512, inference_steps=25, user_tags=USER_TAGS)
    observer = telemetry.run(tags, profile=True)
    t0 = time.perf_counter()
    for stage in STAGES:
        if stage == "sampling" and mode == "normal":
            out["sampling_thread_cpu_s"] = _torch_stage(observer)
        else:
            with observer.stage(stage):
                _fixed_work(iterations // len(STAGES))
    out["tagged_s"] = time.perf_counter() - t0
    if mode == "normal":
        # Nested stages keep the outer stage's tags; leaving the outer stage removes every tag.
        nested = telemetry.run(
            run_tags(duration_s=1, width=64, height=64, inference_steps=1, user_tags={"phase": "n"}),
            profile=True,
        )
        with nested.stage("decode"), nested.stage("encode"):
            marker_nested_work(0.4)
        marker_after_work(0.4)
    # Pushes happen every second; stay long enough in silent mode for one to be hanging when we stop.
    if mode == "silent":
        with observer.stage("encode"):
            _python_work(1.5)
    t0 = time.perf_counter()
    out["stop"] = telemetry.stop_profiling().state
    out["stop_s"] = time.perf_counter() - t0
    if mode == "normal":
        out["restart"] = telemetry.start_profiling(config).state
        out["restop"] = telemetry.stop_profiling().state
    out["requests"] = len(rx.log.requests)
    out["paths"] = sorted({r["path"] for r in rx.log.requests})
    out["errors"] = rx.log.errors
    out["series"] = rx.series_labels()
    out["samples"] = rx.tagged_samples()
    out["nested_samples"] = rx.samples_in("marker_nested_work")
    out["after_samples"] = rx.samples_in("marker_after_work")
    out["run_report"] = observer.finish()
    rx.close()
    return out


def _torch_stage(observer: object) -> float:
    """Matmuls on this thread (GIL released inside torch): visible only with gil_only=False."""
    import torch

    torch.set_num_threads(1)  # keep the work on the tagged thread
    a = torch.randn(192, 192)
    t0 = time.thread_time()
    with observer.stage("sampling"):  # type: ignore[attr-defined]
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:
            a = torch.tanh(a @ a)
    return time.thread_time() - t0


def run_scenario(mode: str) -> tuple[dict, float]:
    """(what the child printed, seconds between its last line and its exit)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), mode],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    exited = time.time()
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out, exited - out["finished_at"]


def _assert_no_paths(labels: dict[str, str], library_keys: frozenset[str] = frozenset()) -> None:
    for key, value in labels.items():
        if key in library_keys:
            continue
        assert "/" not in key + value and "\\" not in key + value, (key, value)


def test_samples_carry_stage_and_run_tags_and_no_paths() -> None:
    pytest.importorskip("pyroscope")
    out, _ = run_scenario("normal")
    assert out["start"] == "active" and out["start_same"] == "active" and out["start_other"] == "kept_first"
    assert out["stop"] == "stopped" and out["stop_s"] < STOP_TIMEOUT_S
    assert out["restart"] == "active" and out["restop"] == "stopped"  # a clean stop frees the agent
    assert out["errors"] == [] and out["paths"] == ["/push.v1.PusherService/Push"]
    cpu_series = [s for s in out["series"] if s.get("__name__") == "process_cpu"]
    assert cpu_series
    assert all(s["service_name"] == "sonic_guard" and s["pack"] == "sonic_guard" for s in cpu_series)
    for series in out["series"]:
        _assert_no_paths(series, library_keys=frozenset({"otel.scope.name"}))
    samples = out["samples"]
    assert samples, "no tagged samples reached the receiver"
    assert out["nested_samples"] and all(
        labels == {"stage": "decode", "phase": "n", "duration": "5s", "resolution": "64x64", "inference_steps": "1"}
        for labels, _ in out["nested_samples"]
    ), out["nested_samples"]
    assert out["after_samples"] and all(labels == {} for labels, _ in out["after_samples"]), out["after_samples"]
    samples = [(labels, v) for labels, v in samples if labels.get("phase") != "n"]
    seen_stages = {labels["stage"] for labels, _ in samples}
    assert "sampling" in seen_stages and seen_stages <= set(STAGES)
    for labels, _ in samples:
        _assert_no_paths(labels)
        assert labels["duration"] == "10s" and labels["resolution"] == "512x512"
        assert labels["inference_steps"] == "25"
        assert {k: labels[k] for k in USER_TAGS} == USER_TAGS
    # gil_only=False: the time torch spends with the GIL released is attributed to the sampling stage.
    sampling_cpu_s = sum(v for labels, v in samples if labels["stage"] == "sampling") / 1e9
    assert sampling_cpu_s > 0.5 * out["sampling_thread_cpu_s"], (sampling_cpu_s, out["sampling_thread_cpu_s"])
    assert set(out["run_report"]["stage_seconds"]) == set(STAGES)


@pytest.mark.parametrize("mode", ["refuse", "closed", "silent"])
def test_unreachable_server_does_not_slow_generation_or_exit(mode: str) -> None:
    pytest.importorskip("pyroscope")
    out, exit_s = run_scenario(mode)
    assert out["start"] == "active"
    # Generous for a shared 2-core machine; a blocked push would add ~10 s.
    assert out["tagged_s"] < 2.0 * out["untagged_s"] + 1.0, (out["tagged_s"], out["untagged_s"])
    assert out["stop_s"] < STOP_TIMEOUT_S + 0.5
    assert out["stop"] == ("stop_pending" if mode == "silent" else "stopped")
    if mode != "closed":
        assert out["requests"] >= 1
    assert exit_s < 5.0  # the process exits promptly even with a flush hanging on a silent server
    assert set(out["run_report"]["stage_seconds"]) == set(STAGES)


def test_receiver_decodes_legacy_ingest() -> None:
    from pyroscope_receiver import PyroscopeReceiver, build_message_classes

    classes = build_message_classes()
    profile = classes["Profile"](string_table=["", "stage", "decode", "cpu", "nanoseconds"])
    sample = profile.sample.add(location_id=[1], value=[7])
    sample.label.add(key=1, str=2)
    with PyroscopeReceiver() as rx:
        request = urllib.request.Request(
            f"{rx.address}/ingest?name=sonic_guard%7Bpack%3Dsonic_guard%7D&format=pprof",
            data=profile.SerializeToString(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        assert rx.series_labels() == [{"service_name": "sonic_guard", "pack": "sonic_guard"}]
        assert rx.tagged_samples() == [({"stage": "decode"}, 7)]


def test_profiling_off_when_pyroscope_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    from sonic_guard.telemetry import ProfilingConfig, Telemetry, run_tags

    monkeypatch.setitem(sys.modules, "pyroscope", None)  # what `import pyroscope` does without the wheel
    telemetry = Telemetry()
    status = telemetry.start_profiling(ProfilingConfig(server_address="http://127.0.0.1:4040"))
    assert not status.active and status.state == "not_installed"
    assert "pyroscope-io" in status.message and "profiling off" in status.message
    observer = telemetry.run(run_tags(duration_s=3, width=64, height=64, inference_steps=2), profile=True)
    with observer.stage("decode"):
        _python_work(0.01)
    assert observer.stage_seconds()["decode"] >= 0.01
    assert telemetry.stop_profiling().state == "not_installed"


def test_no_server_address_means_off() -> None:
    from sonic_guard.telemetry import ProfilingConfig, Telemetry

    status = Telemetry().start_profiling(ProfilingConfig.from_settings(environ={}))
    assert status.state == "off" and "no Pyroscope server" in status.message


if __name__ == "__main__":
    result = scenario(sys.argv[1])
    result["finished_at"] = time.time()
    print(json.dumps(result), flush=True)


def test_retag_moves_later_stages_to_the_planned_size() -> None:
    from sonic_guard.errors import TagError
    from sonic_guard.telemetry import Telemetry
    from sonic_guard.telemetry.stage_observer import Stage
    from sonic_guard.telemetry.tags import plan_tags, run_tags

    requested = run_tags(duration_s=5, width=1024, height=1024, inference_steps=25, user_tags={"team": "a"})
    observer = Telemetry().run(requested)
    observer.retag(plan_tags(704, 896, 20))
    assert dict(observer.tag_items[Stage.DECODE]) == {
        "duration": "5s", "resolution": "704x896", "inference_steps": "20", "team": "a", "stage": "decode"}
    with pytest.raises(TagError):
        observer.retag({"resolution": "a b"})
