"""Profiling through a real ComfyUI 0.3.75 server: the Profiling Tag node wraps the generation and the
ComfyUI process pushes tagged profiles to a loopback Pyroscope receiver started here.

pyroscope-io runs one agent per process, so this file starts its own ComfyUI server (the shared one of
conftest never gets an agent). The second run happens after the receiver is closed: its port then refuses
connections, which is what a Pyroscope server that is down looks like to the agent.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from comfy_host import REPO, ComfyServer, execution_error
from pyroscope_receiver import PyroscopeReceiver

APPLICATION = "sonic_guard_ci"
REQUIRED_NODES = ("SonicGuardModelLoader", "SonicGuardProfilingTag", "SonicGuardGenerate")
USER_TAGS = {"team": "vision", "gpu_pool": "cpu_ci"}
RUN_TAGS = {"duration": "5s", "resolution": "128x128", "inference_steps": "2", **USER_TAGS}
# Labels pyroscope-io adds to every series itself (name, OpenTelemetry scope, runtime); not ours to police.
LIBRARY_SERIES_KEYS = frozenset(
    {"__name__", "otel.scope.name", "otel.scope.version", "process.runtime.name", "process.runtime.version"}
)
UPLOAD_WAIT_S = 40.0  # the node uploads every 10 s; a loaded machine delays the agent's thread


@pytest.fixture(scope="module")
def profiling_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: Path, speech_wav: Path, portrait_png: Path
) -> Iterator[ComfyServer]:
    base = tmp_path_factory.mktemp("comfy_profiling")
    shutil.copytree(tiny_models, base / "models" / "sonic" / "tiny-sonic")
    (base / "input").mkdir(parents=True, exist_ok=True)
    shutil.copy(speech_wav, base / "input" / "speech.wav")
    shutil.copy(portrait_png, base / "input" / "portrait.png")
    # Nothing from the environment may point the agent elsewhere: the node's fields decide.
    clean_env = {name: "" for name in (
        "SONIC_PYROSCOPE_SERVER", "SONIC_PYROSCOPE_APPLICATION_NAME", "SONIC_PYROSCOPE_TENANT",
        "SONIC_PYROSCOPE_BASIC_AUTH_USER", "SONIC_PYROSCOPE_BASIC_AUTH_PASSWORD",
    )}
    server = ComfyServer.start(base, extra_args=["--cache-none"], env=clean_env, required_nodes=REQUIRED_NODES)
    try:
        yield server
    finally:
        server.stop()


def profiled_prompt(server_address: str, seed: int, interpolation: str = "rife") -> dict:
    prompt = json.loads((REPO / "workflows" / "sonic_basic_api.json").read_text())
    prompt["1"]["inputs"]["model_folder"] = "tiny-sonic"
    prompt["5"] = {
        "class_type": "SonicGuardProfilingTag",
        "inputs": {
            "sonic_model": ["1", 0],
            "server_address": server_address,
            "application_name": APPLICATION,
            "tags": ", ".join(f"{key}={value}" for key, value in USER_TAGS.items()),
            "tenant_id": "",
        },
    }
    prompt["4"]["inputs"].update(
        {"sonic_model": ["5", 0], "min_resolution": 128, "inference_steps": 2, "duration": 1.0, "seed": seed,
         "interpolation": interpolation}
    )
    return prompt


def _stage_samples(receiver: PyroscopeReceiver) -> list[tuple[dict[str, str], int, list[str]]]:
    return [
        (labels, value, stack)
        for profile in receiver.profiles()
        for labels, value, stack in zip(profile.sample_labels, profile.sample_values, profile.sample_stacks)
        if "stage" in labels
    ]


def _wait_for_stages(receiver: PyroscopeReceiver, stages: set[str], timeout_s: float) -> set[str]:
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = {labels["stage"] for labels, _, _ in _stage_samples(receiver)}
        if stages <= seen:
            break
        time.sleep(0.5)
    return seen


def _status_text(history: dict) -> str:
    return " ".join(history["outputs"].get("5", {}).get("text", []))


def test_profiled_generation_then_pyroscope_down(profiling_server: ComfyServer) -> None:
    receiver = PyroscopeReceiver("normal").__enter__()
    try:
        history = profiling_server.run(profiled_prompt(receiver.address, seed=1))
        assert execution_error(history) is None, execution_error(history)
        assert _status_text(history).startswith("profiling on"), _status_text(history)
        seen = _wait_for_stages(receiver, {"sampling", "decode", "encode"}, UPLOAD_WAIT_S)
    finally:
        receiver.close()
    assert not receiver.log.errors, receiver.log.errors
    assert all(r["path"] == "/push.v1.PusherService/Push" for r in receiver.log.requests)

    # Series labels: the node's application name and the agent-wide tag, plus the library's own fixed labels.
    series = receiver.series_labels()
    assert series and all(s["service_name"] == APPLICATION and s["pack"] == "sonic_guard" for s in series)
    assert all(set(s) == {"service_name", "pack", *LIBRARY_SERIES_KEYS} for s in series), series[0]
    assert all(r["headers"].get("user-agent", "").startswith("pyroscope-rs/") for r in receiver.log.requests)
    assert {"sampling", "decode"} <= seen and seen <= {
        "preprocess", "audio_features", "sampling", "decode", "interpolation", "encode"}

    samples = _stage_samples(receiver)
    for labels, _, _ in samples:
        assert {key: labels.get(key) for key in RUN_TAGS} == RUN_TAGS, labels
    # The samples come from the ComfyUI process: its prompt thread runs the tagged stages.
    assert any("prompt_worker" in frame for _, _, stack in samples for frame in stack)
    sampling_cpu = sum(value for labels, value, _ in samples if labels["stage"] == "sampling")
    assert sampling_cpu > 0

    # No label anywhere carries a path, a model folder or an input file name.
    ours = [{key: value for key, value in s.items() if key not in LIBRARY_SERIES_KEYS} for s in series]
    every_label = [*ours, *(labels for p in receiver.profiles() for labels in p.sample_labels)]
    for labels in every_label:
        for key, value in labels.items():
            text = f"{key}={value}"
            assert "/" not in text and "\\" not in text, text
            assert not any(word in text for word in ("tiny-sonic", "portrait", "speech", ".png", ".wav")), text

    # The receiver is gone: its port refuses connections. Generation and the server carry on.
    requests_before = len(receiver.log.requests)
    started = time.monotonic()
    history = profiling_server.run(profiled_prompt(receiver.address, seed=2, interpolation="none"))
    assert execution_error(history) is None, execution_error(history)
    assert history["status"]["status_str"] == "success"
    assert _status_text(history).startswith("profiling on"), _status_text(history)
    # Let at least one upload (every 10 s) hit the closed port before checking the server.
    time.sleep(max(0.0, 11.0 - (time.monotonic() - started)))
    assert profiling_server.process.poll() is None, profiling_server.log_tail()
    health = profiling_server.get_json("/sonic/health")
    assert health["profiling"] == "active" and health["status"] == "ok", health
    assert profiling_server.get_json("/system_stats")
    with profiling_server.request("/sonic/metrics") as response:
        metrics = response.read().decode()
    assert 'sonic_runs_total{outcome="success"} 2.0' in metrics
    assert len(receiver.log.requests) == requests_before
    assert "Traceback" not in profiling_server.log_text(), profiling_server.log_tail(60)
