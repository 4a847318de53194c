"""The fleet's metrics path for real: the Prometheus agent config of docs/fleet/ (templated with this test's
ports and a worker name) scrapes a real ComfyUI server with the pack and remote-writes, through a loopback proxy
that records each push's headers, to a Prometheus started with --web.enable-remote-write-receiver (the protocol
of Mimir's /api/v1/push). The pack's series must arrive carrying the worker label.

Prometheus cannot show a push's headers, so the recording proxy is where the tenant header (X-Scope-OrgID) is
checked: Debian's Prometheus 2.42 agent does not send the `headers:` of its remote_write section (recorded here
as a fact, and docs/fleet.md says so); the tenant then comes from a gateway in front of the receiver, which
docs/fleet/mimir-gateway.cfg sets up with HAProxy and this test runs between the agent and the receiver.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from comfy_host import ComfyServer
from fleet_harness import (
    AGENT_CONFIG,
    HAPROXY,
    PROMETHEUS,
    Gateway,
    Prometheus,
    agent_config,
    gateway_tenant,
    recording_proxy,
    wait_until,
)

pytestmark = pytest.mark.skipif(PROMETHEUS is None or HAPROXY is None,
                                reason="Debian prometheus or haproxy is not installed: run scripts/setup.sh")

WORKER = "fleet-test-worker-07"
TENANT = yaml.safe_load(AGENT_CONFIG.read_text())["remote_write"][0]["headers"]["X-Scope-OrgID"]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Prometheus]:
    prom = Prometheus.start(tmp_path / "receiver", {"global": {"scrape_interval": "1m"}}, receiver=True)
    try:
        yield prom
    finally:
        prom.stop()


def test_agent_pushes_the_pack_series_with_the_worker_label_and_the_gateway_adds_the_tenant(
    comfy_server: ComfyServer, receiver: Prometheus, tmp_path: Path
) -> None:
    """agent -> recording proxy (what the agent sends) -> tenant gateway -> recording proxy (what Mimir would
    get) -> receiver."""
    with recording_proxy(f"{receiver.url}/api/v1/write") as at_receiver:
        gateway = Gateway.start(tmp_path / "gateway", at_receiver.server_address[1])
        try:
            with recording_proxy(f"{gateway.url}/api/v1/push") as from_agent:
                config = agent_config(comfy_server.port, f"{from_agent.url}/api/v1/push", WORKER)
                agent = Prometheus.start(tmp_path / "agent", config, agent=True)
                try:
                    names = wait_until(lambda: [n for n in receiver.series_names(f'{{worker="{WORKER}"}}')
                                                if n.startswith("sonic_")], 45, "the pack's series in the receiver")
                    runs = wait_until(lambda: receiver.query(f'sonic_runs_total{{worker="{WORKER}"}}'), 30,
                                      "sonic_runs_total with the worker label")
                finally:
                    agent.stop()  # before the proxies go: an agent with nowhere to push waits to flush
        finally:
            gateway.stop()
    assert {"sonic_runs_total", "sonic_gpu_readout_up", "sonic_predicted_peak_bytes"} <= set(names), names
    assert {s["metric"]["outcome"] for s in runs} == {"success", "failure", "cancelled"}
    for series in runs:
        assert series["metric"]["worker"] == WORKER and series["metric"]["job"] == "sonic_guard"
        assert series["metric"]["pool"] == config["global"]["external_labels"]["pool"]
    # Only sonic_* and `up` are forwarded (write_relabel_configs), never *_created.
    assert receiver.query(f'{{worker="{WORKER}", __name__!~"sonic_.*|up"}}') == []
    assert receiver.query('{__name__=~"sonic_.*_created"}') == []

    # What the agent sent: the remote_write protocol; the tenant only if this Prometheus build sends `headers:`.
    assert from_agent.seen and at_receiver.seen
    path, sent = from_agent.seen[0]
    assert path == "/api/v1/push"
    assert sent["content-encoding"] == "snappy" and sent["content-type"] == "application/x-protobuf"
    if "x-scope-orgid" in sent:
        assert sent["x-scope-orgid"] == TENANT
    elif "Prometheus/2.42" not in sent.get("user-agent", ""):
        pytest.fail(f"{sent.get('user-agent')} sent no X-Scope-OrgID; only Debian's 2.42 is known to drop it")
    # What the receiver got: every push carries the tenant the gateway sets, the same as the agent config's.
    assert gateway_tenant() == TENANT
    assert {headers.get("x-scope-orgid") for _, headers in at_receiver.seen} == {TENANT}
    assert all(h["content-encoding"] == "snappy" for _, h in at_receiver.seen)
