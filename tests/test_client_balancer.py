"""The client behind a load balancer, against a loopback HTTP server standing in for it (no ComfyUI needed):
every request of a pinned client carries X-Sonic-Job, the worker named in X-Sonic-Worker is kept, and a
balancer's own 503 page (no worker left) is a retryable ServerUnreachableError, not a refusal of the workflow."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sonic_guard.client import ComfyClient, PromptRejectedError, ServerUnreachableError
from sonic_guard.client.api import JOB_HEADER, WORKER_HEADER


class _Balancer(http.server.BaseHTTPRequestHandler):
    server: _BalancerServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        return

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.seen.append((self.path, self.headers.get(JOB_HEADER)))
        status, body, content_type = self.server.answer
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header(WORKER_HEADER, "worker02")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer  # noqa: N815 - http.server naming


class _BalancerServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str | None]]
    answer: tuple[int, bytes, str]


@pytest.fixture
def balancer() -> Iterator[_BalancerServer]:
    server = _BalancerServer(("127.0.0.1", 0), _Balancer)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def url(server: _BalancerServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_a_pinned_client_sends_its_job_key_and_keeps_the_worker(balancer: _BalancerServer, tmp_path: Path) -> None:
    balancer.answer = (200, json.dumps({"prompt_id": "p1", "number": 0, "node_errors": {}}).encode(),
                       "application/json")
    base = ComfyClient(url(balancer))
    pinned = base.pinned("job00.1.abc")
    assert pinned.queue_prompt({"1": {}}, "client") == "p1"
    assert pinned.worker == "worker02" and base.worker is None  # the shared client is left as it was
    balancer.answer = (200, b"png bytes", "image/png")
    target = pinned.download({"filename": "a.png", "subfolder": "", "type": "output"}, tmp_path)
    assert target.read_bytes() == b"png bytes"
    base.request("GET", "/sonic/health")
    assert balancer.seen == [("/prompt", "job00.1.abc"), ("/view?filename=a.png&subfolder=&type=output",
                                                           "job00.1.abc"), ("/sonic/health", None)]


@pytest.mark.parametrize("status", [502, 503, 504])
def test_the_balancer_giving_up_is_retryable(balancer: _BalancerServer, tmp_path: Path, status: int) -> None:
    balancer.answer = (status, b"<html><body><h1>503 Service Unavailable</h1></body></html>", "text/html")
    client = ComfyClient(url(balancer)).pinned("job01.1.def")
    with pytest.raises(ServerUnreachableError, match=f"HTTP {status}") as caught:
        client.queue_prompt({"1": {}}, "client")
    assert caught.value.retryable
    image = tmp_path / "face.png"
    image.write_bytes(b"not really a png")
    with pytest.raises(ServerUnreachableError, match=f"HTTP {status}"):
        client.upload(image)


def test_a_json_refusal_is_still_a_refusal(balancer: _BalancerServer) -> None:
    """ComfyUI's own 400 with node errors stays a PromptRejectedError (not retried elsewhere)."""
    balancer.answer = (400, json.dumps({"error": {"type": "prompt_outputs_failed_validation", "message": "x"},
                                        "node_errors": {}}).encode(), "application/json")
    with pytest.raises(PromptRejectedError):
        ComfyClient(url(balancer)).pinned("job02.1.ghi").queue_prompt({"1": {}}, "client")
