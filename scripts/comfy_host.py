"""Start a real ComfyUI server with this pack linked in, and talk to it.

Used by the test fixtures and by the demo. The server runs headless on the CPU, on a free loopback port, with its
own base directory, and is stopped by PID.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import websocket

REPO = Path(__file__).resolve().parent.parent
COMFYUI_DIR = Path(os.environ.get("SONIC_GUARD_HOST", REPO / ".host")) / "ComfyUI"
PACK_LINK_NAME = "sonic-guard"

logger = logging.getLogger(__name__)


class ComfyHostError(RuntimeError):
    """The ComfyUI host could not start, or the pack did not load in it."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_base_dir(base: Path) -> Path:
    """Lay out a ComfyUI base directory with this pack linked into custom_nodes."""
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user/default"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_LINK_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    settings = base / "user" / "default" / "comfy.settings.json"
    if not settings.exists():
        # A fresh user folder opens a Templates dialog over the canvas.
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    return base


@dataclass
class ComfyServer:
    """A running ComfyUI process and a small client for its HTTP and websocket API."""

    base: Path
    port: int
    process: subprocess.Popen
    log_path: Path
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- lifecycle -------------------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        base: Path,
        *,
        extra_args: Iterable[str] = (),
        env: dict[str, str] | None = None,
        timeout_s: float = 120.0,
        required_nodes: Iterable[str] = (),
    ) -> ComfyServer:
        prepare_base_dir(base)
        port = free_port()
        log_path = base / "comfyui.log"
        args = [
            sys.executable, str(COMFYUI_DIR / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
            "--disable-auto-launch", "--base-directory", str(base),
            "--database-url", f"sqlite:///{base / 'user' / 'comfyui.db'}", "--disable-api-nodes", *extra_args,
        ]
        run_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        log_file = open(log_path, "wb")  # noqa: SIM115 - owned by the process for its lifetime
        process = subprocess.Popen(
            args, cwd=COMFYUI_DIR, stdout=log_file, stderr=subprocess.STDOUT, env=run_env, start_new_session=True
        )
        server = cls(base=base, port=port, process=process, log_path=log_path)
        try:
            server._wait_ready(timeout_s)
            server.check_pack_loaded(required_nodes)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ComfyHostError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise ComfyHostError(f"ComfyUI did not answer /system_stats within {timeout_s}s:\n{self.log_tail()}")

    def check_pack_loaded(self, required_nodes: Iterable[str]) -> None:
        log = self.log_text()
        if "IMPORT FAILED" in log:
            raise ComfyHostError(f"a custom node pack failed to import:\n{self.log_tail(80)}")
        info = self.get_json("/object_info")
        missing = [node for node in required_nodes if node not in info]
        if missing:
            raise ComfyHostError(f"nodes missing from /object_info: {missing}\n{self.log_tail(80)}")

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout_s)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # --- HTTP ------------------------------------------------------------------------------------------------
    def request(self, path: str, data: dict | None = None, method: str | None = None, timeout: float = 30.0):
        body = json.dumps(data).encode() if data is not None else None
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - loopback URL built here

    def get_json(self, path: str, timeout: float = 30.0):
        with self.request(path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def post_json(self, path: str, data: dict) -> tuple[int, dict]:
        try:
            with self.request(path, data) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    # --- prompts ---------------------------------------------------------------------------------------------
    def queue(self, prompt: dict) -> str:
        """Queue an API-format prompt; fail unless the server accepted every node."""
        status, answer = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200 or answer.get("node_errors"):
            raise ComfyHostError(f"/prompt refused ({status}): {json.dumps(answer, indent=1)[:4000]}")
        return answer["prompt_id"]

    def follow(self, prompt: dict, timeout_s: float = 600.0,
               on_message: Callable[[str, dict], None] | None = None) -> tuple[str, list[dict]]:
        """Queue a prompt and read /ws until it ends; `on_message(prompt_id, message)` sees each of its messages."""
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=2)
        events: list[dict] = []
        try:
            prompt_id = self.queue(prompt)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    raw = ws.recv()
                except websocket.WebSocketTimeoutException:
                    continue
                if not isinstance(raw, str):
                    continue
                message = json.loads(raw)
                data = message.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                events.append(message)
                if on_message is not None:
                    on_message(prompt_id, message)
                if message["type"] in ("execution_error", "execution_interrupted", "execution_success"):
                    break
                if message["type"] == "executing" and data.get("node") is None and data.get("prompt_id"):
                    break
            else:
                raise ComfyHostError(f"prompt {prompt_id} did not finish in {timeout_s}s:\n{self.log_tail()}")
        finally:
            ws.close()
        return prompt_id, events

    def run(self, prompt: dict, timeout_s: float = 600.0) -> dict:
        """Queue a prompt, follow /ws until it finishes, and return its /history entry."""
        prompt_id, events = self.follow(prompt, timeout_s)
        history = self.wait_history(prompt_id)
        history["_events"] = events
        return history

    def wait_history(self, prompt_id: str, timeout_s: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            time.sleep(0.2)
        raise ComfyHostError(f"no history for {prompt_id}:\n{self.log_tail()}")


def execution_error(history: dict) -> dict | None:
    """The execution_error message of a finished prompt, if any."""
    for kind, data in history.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None
