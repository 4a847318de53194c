"""Debian's Prometheus against a real ComfyUI 0.3.75 server with the pack.

1. A Prometheus server scrapes /sonic/metrics; after one generation PromQL returns the run counters.
2. The example agent config of docs/fleet/ (only port, URL and intervals changed) runs as
   `prometheus --enable-feature=agent` and forwards the pack's series, with the per-worker external labels,
   to a second Prometheus acting as remote_write receiver (the protocol Mimir's /api/v1/push speaks).
3. The tenant header of that config, seen by a loopback receiver: Debian's 2.42 build drops remote_write
   `headers:` (an expected failure, as docs/fleet.md says); an agent that sends it must send the right tenant.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from comfy_host import REPO, ComfyServer, execution_error
from fleet_harness import Prometheus

PROMETHEUS = shutil.which("prometheus")
AGENT_CONFIG = REPO / "docs" / "fleet" / "prometheus-agent.yml"

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="Debian prometheus is not installed")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrometheusProcess(Prometheus):
    """The fleet harness's Prometheus (start, readiness, query, stop) plus polling for a PromQL answer."""

    def wait_for(self, promql: str, timeout_s: float = 30.0, predicate=bool) -> list[dict]:
        """Poll `promql` until `predicate(result)` holds; fail with the log otherwise."""
        deadline = time.monotonic() + timeout_s
        result: list[dict] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if predicate(result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"{promql!r} gave {result} after {timeout_s}s\n{self.log()}")

@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator:
    started: list[PrometheusProcess] = []

    def start(name: str, config: dict, **kwargs: bool) -> PrometheusProcess:
        prom = PrometheusProcess.start(tmp_path / name, config, **kwargs)
        started.append(prom)
        return prom

    try:
        yield start
    finally:
        for prom in reversed(started):
            prom.stop()


def _value(result: list[dict]) -> float:
    return sum(float(series["value"][1]) for series in result)


def basic_prompt(**generator_inputs: object) -> dict:
    prompt = json.loads((REPO / "workflows" / "sonic_basic_api.json").read_text())
    prompt["1"]["inputs"]["model_folder"] = "tiny-sonic"
    prompt["4"]["inputs"].update({"min_resolution": 128, "inference_steps": 2, **generator_inputs})
    return prompt


def test_prometheus_scrape_answers_promql_after_a_run(comfy_server: ComfyServer, prometheus_factory) -> None:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{
            "job_name": "sonic_guard",
            "metrics_path": "/sonic/metrics",
            "static_configs": [{"targets": [f"127.0.0.1:{comfy_server.port}"]}],
        }],
    }
    prom = prometheus_factory("server", config)
    prom.wait_for('up{job="sonic_guard"} == 1')
    # The server may be shared with other test files: compare with what it had counted before this run.
    before_runs = _value(prom.wait_for('sonic_runs_total{outcome="success"}'))
    before_sampling = _value(prom.query('sonic_stage_seconds_count{stage="sampling"}'))

    history = comfy_server.run(basic_prompt(duration=1.0, interpolation="none"))
    assert execution_error(history) is None, execution_error(history)

    runs = prom.wait_for('sonic_runs_total{outcome="success"}', predicate=lambda r: _value(r) >= before_runs + 1)
    assert _value(runs) == before_runs + 1
    (series,) = runs
    assert series["metric"]["job"] == "sonic_guard" and series["metric"]["instance"] == f"127.0.0.1:{comfy_server.port}"
    # Every stage the generator tags was timed into the histogram by the same run.
    stages = prom.query('sonic_stage_seconds_count{stage=~"preprocess|audio_features|sampling|decode|encode"} > 0')
    assert {s["metric"]["stage"] for s in stages} == {"preprocess", "audio_features", "sampling", "decode", "encode"}
    assert _value(prom.query('sonic_stage_seconds_count{stage="sampling"}')) == before_sampling + 1
    assert _value(prom.query('sonic_stage_seconds_sum{stage="sampling"}')) > 0
    assert _value(prom.query("sonic_predicted_peak_bytes")) > 0
    assert prom.query('sonic_runs_total{outcome="failure"}')  # pre-initialised at zero, so rate() works
    assert _value(prom.query("sum(sonic_failures_total)")) == _value(prom.query(
        'sum(sonic_runs_total{outcome=~"failure|cancelled"})'))
    # The queries docs/fleet.md suggests parse and run against what the pack exposes.
    for query in documented_queries():
        prom.query(query)
    assert _value(prom.query('sum(increase(sonic_runs_total{outcome="success"}[5m]))')) > 0


def documented_queries() -> list[str]:
    doc = (REPO / "docs" / "fleet.md").read_text()
    blocks = re.findall(r"```promql\n(.*?)```", doc, flags=re.S)
    queries = [re.split(r"\s+#\s", line)[0].strip() for block in blocks for line in block.splitlines() if line.strip()]
    assert len(queries) >= 5, queries
    return queries


def test_fleet_agent_config_forwards_to_a_remote_write_receiver(
    comfy_server: ComfyServer, prometheus_factory
) -> None:
    receiver = prometheus_factory("receiver", {"global": {"scrape_interval": "1m"}}, receiver=True)

    # The documented agent config, changed only where a test must: the ComfyUI port, the remote_write URL
    # (the receiver instead of Mimir) and the intervals (seconds instead of 15 s).
    config = yaml.safe_load(AGENT_CONFIG.read_text())
    config["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s"})
    config["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{comfy_server.port}"]
    remote = config["remote_write"][0]
    remote["url"] = f"{receiver.url}/api/v1/write"
    remote["queue_config"]["batch_send_deadline"] = "1s"
    agent = prometheus_factory("agent", config, agent=True)

    labels = config["global"]["external_labels"]
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    forwarded = receiver.wait_for(f'sonic_runs_total{{{selector}}}', timeout_s=45)
    assert {s["metric"]["outcome"] for s in forwarded} == {"success", "failure", "cancelled"}
    assert all(s["metric"]["job"] == "sonic_guard" for s in forwarded)
    assert receiver.wait_for(f'up{{{selector}}} == 1')
    # write_relabel_configs keeps sonic_* and up only: the agent's scrape bookkeeping stays local.
    assert receiver.query("scrape_duration_seconds") == []
    assert receiver.query('{__name__=~".+", __name__!~"sonic_.*|up"}') == []
    assert receiver.query('{__name__=~"sonic_.*_created"}') == []
    assert agent.process.poll() is None, agent.log()


class _PushCapture(http.server.BaseHTTPRequestHandler):
    """Answers remote_write pushes with 204 and keeps their headers."""

    server: _CaptureServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet test output
        return

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.pushes.append((self.path, {key.lower(): value for key, value in self.headers.items()}))
        self.send_response(204)
        self.end_headers()


class _CaptureServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    pushes: list[tuple[str, dict[str, str]]]


def test_fleet_agent_tenant_header(comfy_server: ComfyServer, prometheus_factory) -> None:
    capture = _CaptureServer(("127.0.0.1", 0), _PushCapture)
    capture.pushes = []
    threading.Thread(target=capture.serve_forever, daemon=True).start()
    agent = None
    try:
        config = yaml.safe_load(AGENT_CONFIG.read_text())
        config["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s"})
        config["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{comfy_server.port}"]
        remote = config["remote_write"][0]
        remote["url"] = f"http://127.0.0.1:{capture.server_address[1]}/api/v1/push"
        remote["queue_config"]["batch_send_deadline"] = "1s"
        agent = prometheus_factory("agent_tenant", config, agent=True)
        deadline = time.monotonic() + 30
        while not capture.pushes and time.monotonic() < deadline:
            time.sleep(0.3)
        assert capture.pushes, agent.log()
    finally:
        if agent is not None:  # before the capture goes: an agent with nowhere to push waits to flush
            agent.stop()
        capture.shutdown()
        capture.server_close()
    path, headers = capture.pushes[0]
    assert path == "/api/v1/push"
    assert headers["content-encoding"] == "snappy" and headers["content-type"] == "application/x-protobuf"
    tenant = remote["headers"]["X-Scope-OrgID"]
    if "x-scope-orgid" not in headers:
        pytest.xfail(f"{headers.get('user-agent')} drops remote_write headers: (Debian 2.42 does); see docs/fleet.md")
    assert headers["x-scope-orgid"] == tenant
