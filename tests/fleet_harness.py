"""A fleet on one machine: ComfyUI workers with the pack, HAProxy in front, Prometheus agents and receivers.

Shared by tests/test_fleet_*.py and bench/bench_fleet.py. Every process is started in its own session and
stopped by its own id; every file goes under the folder the caller gives (a pytest tmp_path in the tests).
The HAProxy config is docs/fleet/haproxy.cfg itself, with only the addresses, the check interval and a stats
socket filled in, so the tests check the file users copy.
"""

from __future__ import annotations

import csv
import http.client
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from comfy_host import REPO, ComfyServer, free_port

from sonic_guard.client import BatchOutcome, BatchRunner, ComfyClient, Overrides, jobs_from_folder, load_workflow

FLEET_DOCS = REPO / "docs" / "fleet"
HAPROXY_CONFIG = FLEET_DOCS / "haproxy.cfg"
AGENT_CONFIG = FLEET_DOCS / "prometheus-agent.yml"
HAPROXY = shutil.which("haproxy")
PROMETHEUS = shutil.which("prometheus")
BACKEND = "comfy_workers"


# --- processes -----------------------------------------------------------------------------------------------
def stop_process(process: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group it leads (started with start_new_session), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout_s)


def kill_worker(worker: ComfyServer) -> float:
    """kill -9 the whole ComfyUI process group, as a crash or an OOM killer would; the monotonic time of the kill."""
    killed_at = time.monotonic()
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait(15)
    return killed_at


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")


# --- ComfyUI workers -----------------------------------------------------------------------------------------
def start_workers(root: Path, count: int, tiny_models: Path, inputs: Sequence[Path] = (),
                  required_nodes: Sequence[str] = ()) -> list[ComfyServer]:
    """`count` ComfyUI servers with the pack, each with its own base folder holding the small model set."""
    workers: list[ComfyServer] = []
    try:
        for number in range(1, count + 1):
            base = root / f"worker{number:02d}"
            (base / "models" / "sonic").mkdir(parents=True, exist_ok=True)
            if not (base / "models" / "sonic" / "tiny-sonic").exists():
                shutil.copytree(tiny_models, base / "models" / "sonic" / "tiny-sonic")
            (base / "input").mkdir(exist_ok=True)
            for item in inputs:
                shutil.copy(item, base / "input" / item.name)
            workers.append(ComfyServer.start(base, extra_args=["--cache-none"], required_nodes=required_nodes))
    except BaseException:
        stop_all(workers)
        raise
    return workers


def stop_all(workers: Sequence[ComfyServer]) -> None:
    for worker in workers:
        worker.stop()


# --- HAProxy -------------------------------------------------------------------------------------------------
def render_haproxy_config(port: int, workers: Sequence[tuple[str, int]], stats_socket: Path,
                          check_interval: str = "500ms") -> str:
    """docs/fleet/haproxy.cfg with this machine's addresses: the bind port, one `server` line per worker, the
    check interval, and an admin stats socket (for reading the workers' UP/DOWN state)."""
    text = HAPROXY_CONFIG.read_text()
    text, binds = re.subn(r"^(\s*)bind \S+", rf"\g<1>bind 127.0.0.1:{port}", text, flags=re.M)
    text, intervals = re.subn(r"\binter \S+", f"inter {check_interval}", text)
    servers = "".join(f"    server {name} 127.0.0.1:{worker_port} check cookie {name}\n"
                      for name, worker_port in workers)
    text, server_blocks = re.subn(r"(^\s*server .*\n)+", servers, text, flags=re.M)
    text, globals_ = re.subn(r"^global\n", f"global\n    stats socket {stats_socket} mode 600 level admin\n",
                             text, flags=re.M)
    if (binds, intervals, server_blocks, globals_) != (1, 1, 1, 1):
        raise ValueError(f"{HAPROXY_CONFIG} no longer has one bind, inter, server block and global section")
    return text


@dataclass
class HAProxy:
    process: subprocess.Popen
    port: int
    config_path: Path
    stats_socket: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path, workers: Sequence[tuple[str, int]], check_interval: str = "500ms") -> HAProxy:
        if HAPROXY is None:
            raise RuntimeError("haproxy is not installed: run scripts/setup.sh (Debian package `haproxy`)")
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        stats_socket = workdir / "haproxy.sock"
        stats_socket.unlink(missing_ok=True)  # a socket left by an earlier run must not answer for this one
        config_path = workdir / "haproxy.cfg"
        config_path.write_text(render_haproxy_config(port, workers, stats_socket, check_interval))
        checked = subprocess.run([HAPROXY, "-c", "-f", str(config_path)], capture_output=True, text=True)
        if checked.returncode != 0:
            raise RuntimeError(f"haproxy -c refused {config_path}:\n{checked.stdout}{checked.stderr}")
        log_path = workdir / "haproxy.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([HAPROXY, "-db", "-f", str(config_path)], stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        proxy = cls(process, port, config_path, stats_socket, log_path)
        try:
            wait_until(lambda: proxy.process.poll() is not None or proxy.all_up(len(workers)), 30,
                       "HAProxy marking the workers UP")
            if proxy.process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {proxy.process.returncode}:\n{proxy.log()}")
        except BaseException:
            proxy.stop()
            raise
        return proxy

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def command(self, line: str) -> str:
        """One command on the stats socket (`show stat`, `show servers state`, ...)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_stats(self) -> dict[str, dict[str, str]]:
        """`show stat` of the backend's servers: name -> the CSV row (status, chkfail, lastchg, ...)."""
        try:
            text = self.command("show stat")
        except (FileNotFoundError, ConnectionRefusedError):
            return {}
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {row["svname"]: row for row in rows
                if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")}

    def server_states(self) -> dict[str, str]:
        """name -> UP / DOWN (a server that failed a check but not yet `fall` of them reads `UP 1/2`)."""
        return {name: row["status"] for name, row in self.server_stats().items()}

    def all_up(self, count: int) -> bool:
        """Every worker UP and the frontend accepting connections."""
        states = self.server_states()
        if len(states) != count or any(state != "UP" for state in states.values()):
            return False
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        stop_process(self.process)


# --- Prometheus ----------------------------------------------------------------------------------------------
@dataclass
class Prometheus:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path, config: dict[str, Any], *, agent: bool = False,
              receiver: bool = False) -> Prometheus:
        if PROMETHEUS is None:
            raise RuntimeError("prometheus is not installed: run scripts/setup.sh (Debian package `prometheus`)")
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        args = [PROMETHEUS, f"--config.file={config_path}", f"--web.listen-address=127.0.0.1:{port}"]
        # Debian's 2.42 has agent mode behind a feature flag (a plain --agent flag came with 3.x).
        args += (["--enable-feature=agent", f"--storage.agent.path={workdir / 'wal'}"] if agent
                 else [f"--storage.tsdb.path={workdir / 'tsdb'}"])
        if receiver:
            args.append("--web.enable-remote-write-receiver")
        log_path = workdir / "prometheus.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        prom = cls(process, port, log_path)
        try:
            wait_until(prom._ready, 30, "Prometheus answering /-/ready", interval_s=0.2)
        except BaseException:
            prom.stop()
            raise
        return prom

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:  # noqa: S310 - loopback
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            answer = json.loads(response.read())
        if answer.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {answer}")
        return answer["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return self.api("query", query=promql)["result"]

    def series_names(self, match: str) -> list[str]:
        """Metric names the receiver holds for a series selector (`/api/v1/label/__name__/values`)."""
        return self.api("label/__name__/values", **{"match[]": match})

    def stop(self) -> None:
        stop_process(self.process)


def agent_config(comfy_port: int, remote_write_url: str, worker: str, interval: str = "1s") -> dict[str, Any]:
    """docs/fleet/prometheus-agent.yml changed only where a test must: the ComfyUI port, the remote_write URL,
    the worker label and the intervals."""
    config = yaml.safe_load(AGENT_CONFIG.read_text())
    config["global"].update({"scrape_interval": interval, "scrape_timeout": interval})
    config["global"]["external_labels"]["worker"] = worker
    config["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{comfy_port}"]
    remote = config["remote_write"][0]
    remote["url"] = remote_write_url
    remote["queue_config"]["batch_send_deadline"] = interval
    return config


# --- a loopback proxy that records remote_write headers ------------------------------------------------------
class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    server: RecordingProxy

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        return

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {key: value for key, value in self.headers.items() if key.lower() not in ("host", "content-length")}
        self.server.seen.append((self.path, {key.lower(): value for key, value in headers.items()}))
        target = urllib.parse.urlsplit(self.server.upstream)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        try:
            conn.request("POST", target.path, body=body, headers=headers)
            answer = conn.getresponse()
            payload = answer.read()
            self.send_response(answer.status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        finally:
            conn.close()


class RecordingProxy(http.server.ThreadingHTTPServer):
    """Forwards each POST to `upstream` (the receiver's write URL) and keeps (path, lower-cased headers)."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.upstream = upstream
        self.seen: list[tuple[str, dict[str, str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def recording_proxy(upstream: str) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(upstream)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


# --- a batch's evidence --------------------------------------------------------------------------------------
@dataclass
class StateSummary:
    """What the batch state file says: per job its `done` lines and its failed attempts."""

    done: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> StateSummary:
        summary = cls()
        for line in path.read_text().splitlines():
            record = json.loads(line)
            target = summary.done if record["status"] == "done" else summary.failed
            target.setdefault(record["name"], []).append(record)
        return summary


def leftover_partials(out_dir: Path) -> list[Path]:
    """Half-written downloads (`*.part`) anywhere in the batch's output folder."""
    return sorted(out_dir.rglob("*.part"))


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: one of the measured values)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


# --- a batch through the balancer, optionally killing a worker in the middle ---------------------------------
# The cheapest real generation: the small model, 0.5 s of audio, 128 px, 1 step, no frame interpolation.
TINY_RUN = Overrides(min_resolution=128, steps=1, duration=0.5, sets=(
    ("1", "model_folder", "tiny-sonic"), ("1", "load_rife", False), ("4", "interpolation", "none")))
BASIC_WORKFLOW = REPO / "workflows" / "sonic_basic_api.json"


def make_pairs(folder: Path, count: int, portrait: Path, speech: Path) -> Path:
    """`count` (image, audio) jobs named job00, job01, ... (the same portrait and speech: the fleet is tested,
    not the inputs)."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        shutil.copy(portrait, folder / f"job{number:02d}{portrait.suffix}")
        shutil.copy(speech, folder / f"job{number:02d}{speech.suffix}")
    return folder


@dataclass
class BatchRecord:
    """One batch through the balancer: the runner's outcome, every event with its time, and the kill if any."""

    outcome: BatchOutcome
    events: list[tuple[float, str, dict[str, Any]]]
    seconds: float
    killed: str | None = None
    killed_at: float | None = None
    down_after_s: float | None = None  # kill -9 -> HAProxy's stats say DOWN

    def latencies(self) -> list[float]:
        """Per job: its first `chosen` (submitted) to its `done` (outputs downloaded), retries included."""
        first: dict[str, float] = {}
        done: dict[str, float] = {}
        for stamp, kind, info in self.events:
            if kind == "chosen":
                first.setdefault(info["job"], stamp)
            elif kind == "done":
                done[info["job"]] = stamp
        return [done[name] - first[name] for name in done]


def run_batch(balancer_url: str, pairs: Path, out_dir: Path, *, parallel: int, proxy: HAProxy | None = None,
              workers: dict[str, ComfyServer] | None = None, kill_after_done: int | None = None) -> BatchRecord:
    """Run the pairs through the balancer with the pack's BatchRunner. With `kill_after_done`, the worker that
    takes the first job queued after that many jobs finished is killed with SIGKILL right after it queued it,
    and HAProxy's stats socket is read every 50 ms until it marks that worker DOWN."""
    events: list[tuple[float, str, dict[str, Any]]] = []
    lock = threading.Lock()
    kill: dict[str, Any] = {}
    watcher: list[threading.Thread] = []

    def watch_down(name: str, killed_at: float) -> None:
        assert proxy is not None
        deadline = killed_at + 30
        while time.monotonic() < deadline:
            if proxy.server_states().get(name, "").startswith("DOWN"):
                kill["down_after_s"] = time.monotonic() - killed_at
                return
            time.sleep(0.05)

    def on_event(kind: str, info: dict[str, Any]) -> None:
        with lock:
            events.append((time.monotonic(), kind, info))
            finished = sum(1 for _, k, _ in events if k == "done")
            if (kind == "queued" and kill_after_done is not None and "name" not in kill
                    and finished >= kill_after_done and workers and info.get("worker") in workers):
                kill["name"] = info["worker"]
                kill["at"] = kill_worker(workers[info["worker"]])
                thread = threading.Thread(target=watch_down, args=(kill["name"], kill["at"]), daemon=True)
                thread.start()
                watcher.append(thread)

    runner = BatchRunner([ComfyClient(balancer_url)], load_workflow(BASIC_WORKFLOW), TINY_RUN, out_dir,
                         parallel=parallel, max_attempts=3, wait_for_server_s=60, poll_interval_s=0.5,
                         timeout_s=300, on_event=on_event)
    started = time.monotonic()
    outcome = runner.run(jobs_from_folder(pairs))
    seconds = time.monotonic() - started
    for thread in watcher:
        thread.join(35)
    return BatchRecord(outcome, events, seconds, kill.get("name"), kill.get("at"), kill.get("down_after_s"))


# --- the tenant gateway ----------------------------------------------------------------------------------------
GATEWAY_CONFIG = FLEET_DOCS / "mimir-gateway.cfg"


def gateway_tenant() -> str:
    """The tenant docs/fleet/mimir-gateway.cfg sets (its `http-request set-header X-Scope-OrgID` line)."""
    match = re.search(r"set-header X-Scope-OrgID (\S+)", GATEWAY_CONFIG.read_text())
    if match is None:
        raise ValueError(f"{GATEWAY_CONFIG} no longer sets X-Scope-OrgID")
    return match.group(1)


@dataclass
class Gateway:
    """docs/fleet/mimir-gateway.cfg run by HAProxy: pushes in on `port`, out to `upstream` with the tenant."""

    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path, upstream_port: int) -> Gateway:
        if HAPROXY is None:
            raise RuntimeError("haproxy is not installed: run scripts/setup.sh (Debian package `haproxy`)")
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        text = GATEWAY_CONFIG.read_text()
        text, binds = re.subn(r"^(\s*)bind \S+", rf"\g<1>bind 127.0.0.1:{port}", text, flags=re.M)
        text, servers = re.subn(r"^(\s*)server (\S+) \S+", rf"\g<1>server \g<2> 127.0.0.1:{upstream_port}", text,
                                flags=re.M)
        if (binds, servers) != (1, 1):
            raise ValueError(f"{GATEWAY_CONFIG} no longer has one bind and one server line")
        config_path = workdir / "gateway.cfg"
        config_path.write_text(text)
        log_path = workdir / "gateway.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([HAPROXY, "-db", "-f", str(config_path)], stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        gateway = cls(process, port, log_path)

        def listening() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            return True

        try:
            wait_until(listening, 30, "the tenant gateway listening")
        except BaseException:
            gateway.stop()
            raise
        return gateway

    def stop(self) -> None:
        stop_process(self.process)
