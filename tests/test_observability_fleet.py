"""The fleet examples in docs/fleet/ are valid and do what docs/fleet.md says (no ComfyUI needed here).

The agent config is checked by Debian's promtool; the health-check script runs against a loopback server that
answers with the pack's real health snapshot; the worker env file is read by the real ProfilingConfig.
"""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sonic_guard.telemetry import profiling_config
from sonic_guard.telemetry.health import HealthThresholds, health_http_status
from sonic_guard.telemetry.hub import Telemetry
from sonic_guard.telemetry.profiling_config import ProfilingConfig

REPO = Path(__file__).resolve().parents[1]
FLEET = REPO / "docs" / "fleet"
AGENT_CONFIG = FLEET / "prometheus-agent.yml"
HEALTH_SCRIPT = FLEET / "sonic-health-check.sh"
WORKER_ENV = FLEET / "sonic-worker.env"
FLEET_DOC = REPO / "docs" / "fleet.md"

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) missing")


@needs_promtool
def test_agent_config_passes_promtool() -> None:
    result = subprocess.run(["promtool", "check", "config", str(AGENT_CONFIG)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_rejects_a_broken_copy(tmp_path: Path) -> None:
    """The check above can fail: a config with a misspelt key does not pass."""
    broken = tmp_path / "broken.yml"
    broken.write_text(AGENT_CONFIG.read_text().replace("remote_write:", "remote_wrte:"))
    result = subprocess.run(["promtool", "check", "config", str(broken)], capture_output=True, text=True)
    assert result.returncode != 0


def test_agent_config_scrapes_loopback_and_writes_to_mimir_with_tenant() -> None:
    config = yaml.safe_load(AGENT_CONFIG.read_text())
    (scrape,) = config["scrape_configs"]
    assert scrape["metrics_path"] == "/sonic/metrics"
    assert scrape["static_configs"][0]["targets"] == ["127.0.0.1:8188"]
    (remote,) = config["remote_write"]
    assert remote["url"].endswith("/api/v1/push")
    assert remote["headers"]["X-Scope-OrgID"]
    labels = config["global"]["external_labels"]
    assert labels["worker"] and set(labels) <= {"worker", "pool", "region"}
    # Agent mode refuses rule evaluation and alerting; the example must not carry them.
    assert not {"rule_files", "alerting"} & set(config)
    keep, drop = remote["write_relabel_configs"]
    assert keep["action"] == "keep" and drop["action"] == "drop"
    assert re.fullmatch(keep["regex"], "sonic_runs_total") and not re.fullmatch(keep["regex"], "go_gc_duration")
    assert re.fullmatch(drop["regex"], "sonic_runs_created") and not re.fullmatch(drop["regex"], "sonic_runs_total")


class _HealthHandler(http.server.BaseHTTPRequestHandler):
    server: _HealthServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet test output
        return

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        import json

        if self.path != "/sonic/health":
            self.send_error(404)
            return
        snapshot = self.server.telemetry.health_snapshot(queue_length=0)
        body = json.dumps(snapshot).encode()
        self.send_response(health_http_status(snapshot))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _HealthServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    telemetry: Telemetry


@pytest.fixture
def health_server() -> Iterator[_HealthServer]:
    """Serves the pack's real health snapshot the way nodes/routes.py does (200 ok / 503 degraded)."""
    server = _HealthServer(("127.0.0.1", 0), _HealthHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _run_check(base_url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(HEALTH_SCRIPT), base_url], capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin", "SONIC_HEALTH_TIMEOUT_S": "5"},
    )


def test_health_check_script_ok_degraded_and_down(health_server: _HealthServer) -> None:
    host, port = health_server.server_address[:2]
    base = f"http://{host}:{port}"

    health_server.telemetry = Telemetry(thresholds=HealthThresholds(require_gpu=False))
    ok = _run_check(base)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip() == "ok"

    # A recent OOM makes the worker degraded (503) whatever the machine has.
    health_server.telemetry.record_error("oom")
    degraded = _run_check(base)
    assert degraded.returncode == 1
    assert degraded.stdout.startswith("degraded:") and "recent_oom" in degraded.stdout

    health_server.shutdown()
    health_server.server_close()
    down = _run_check(base)
    assert down.returncode == 1
    assert down.stdout.startswith("no answer")


def _read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def test_worker_env_file_is_what_the_profiling_config_reads() -> None:
    env = _read_env_file(WORKER_ENV)
    names = {value for key, value in vars(profiling_config).items() if key.startswith("ENV_")}
    assert set(env) == names
    config = ProfilingConfig.from_settings(environ=env)
    assert config.enabled and config.server_address == env["SONIC_PYROSCOPE_SERVER"]
    assert config.tenant_id == env["SONIC_PYROSCOPE_TENANT"]
    assert config.basic_auth_user is None  # left empty in the example: both empty is allowed


def test_fleet_doc_names_every_setting_and_example() -> None:
    doc = FLEET_DOC.read_text()
    for name in (v for k, v in vars(profiling_config).items() if k.startswith("ENV_")):
        assert name in doc, name
    for example in FLEET.iterdir():
        assert f"fleet/{example.name}" in doc, example.name
    for phrase in ("/sonic/metrics", "/sonic/health", "X-Scope-OrgID", "/api/v1/push", "external_labels"):
        assert phrase in doc, phrase
