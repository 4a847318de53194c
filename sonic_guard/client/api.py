"""HTTP talk to one ComfyUI server: health, uploads, queueing, history, downloads (standard library only)."""

from __future__ import annotations

import http.client
import json
import logging
import mimetypes
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PromptRejectedError, ServerUnreachableError

logger = logging.getLogger(__name__)

# Where the client's uploads go inside the server's input folder, so they do not mix with hand-placed files.
UPLOAD_SUBFOLDER = "sonic_client"
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, TimeoutError, socket.timeout, OSError)
# Sent on every request of one job attempt: a load balancer hashes it (HAProxy `balance hdr(X-Sonic-Job)`) so
# that the upload, /prompt, /ws, /history and /view of a job all reach the worker that holds its prompt.
JOB_HEADER = "X-Sonic-Job"
# A balancer names the worker that answered in this response header (HAProxy: `http-response set-header`).
WORKER_HEADER = "X-Sonic-Worker"
# What a balancer answers when no worker could take the request: the job may be tried again elsewhere.
BALANCER_GAVE_UP = (502, 503, 504)


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes
    worker: str | None = None  # the balancer's WORKER_HEADER, when one is in front

    def json(self) -> Any:
        return json.loads(self.body or b"null")


def normalise_url(url: str) -> str:
    """`host:port` or a full URL, without the trailing slash."""
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


class ComfyClient:
    """A small synchronous client for one ComfyUI server."""

    def __init__(self, base_url: str, timeout_s: float = 30.0, job_key: str | None = None) -> None:
        self.url = normalise_url(base_url)
        self.timeout_s = timeout_s
        self.job_key = job_key
        # The worker behind a balancer that took this job's prompt (one client per job attempt, see pinned()).
        self.worker: str | None = None

    def pinned(self, job_key: str) -> ComfyClient:
        """A client for one job attempt: every request carries `job_key`, so a balancer keeps them on one worker."""
        return ComfyClient(self.url, self.timeout_s, job_key=job_key)

    @property
    def job_headers(self) -> dict[str, str]:
        return {JOB_HEADER: self.job_key} if self.job_key else {}

    def __repr__(self) -> str:
        return f"ComfyClient({self.url!r})"

    @property
    def websocket_url(self) -> str:
        scheme, rest = self.url.split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest

    # --- plumbing ---------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout_s: float | None = None) -> HttpAnswer:
        """Any HTTP status comes back as an answer; only a failed connection raises (ServerUnreachableError)."""
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={**self.job_headers, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as resp:  # noqa: S310 - user URL
                return HttpAnswer(resp.status, resp.read(), resp.headers.get(WORKER_HEADER))
        except urllib.error.HTTPError as err:
            return HttpAnswer(err.code, err.read(), err.headers.get(WORKER_HEADER))
        except NETWORK_ERRORS as err:
            raise ServerUnreachableError(self.url, _network_detail(err)) from err

    def get_json(self, path: str, timeout_s: float | None = None) -> Any:
        answer = self.request("GET", path, timeout_s=timeout_s)
        if answer.status != 200:
            raise ServerUnreachableError(self.url, f"GET {path} answered HTTP {answer.status}")
        return answer.json()

    # --- state of the server ----------------------------------------------------------------------------------
    def health(self, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """The pack's /sonic/health snapshot (its body also comes with 503 = degraded); None without the pack."""
        answer = self.request("GET", "/sonic/health", timeout_s=timeout_s)
        if answer.status == 404:
            return None
        try:
            snapshot = answer.json()
        except json.JSONDecodeError as err:
            raise ServerUnreachableError(self.url, f"/sonic/health answered HTTP {answer.status}, not JSON") from err
        return snapshot if isinstance(snapshot, dict) else None

    def queue_length(self, timeout_s: float = 5.0) -> int:
        """Prompts running or waiting, from ComfyUI's own GET /prompt."""
        info = self.get_json("/prompt", timeout_s=timeout_s)
        return int(info.get("exec_info", {}).get("queue_remaining", 0))

    # --- a run ------------------------------------------------------------------------------------------------
    def upload(self, path: Path, subfolder: str = UPLOAD_SUBFOLDER) -> str:
        """Upload a file into the server's input folder; the name to give LoadImage / Load Audio.

        ComfyUI's /upload/image stores any file type. Without `overwrite` it reuses a file with the same name and
        the same bytes, and renames a different file with the same name (`face (1).png`), so jobs never clash.
        """
        path = Path(path)
        boundary = uuid.uuid4().hex
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        fields = {"type": "input", "subfolder": subfolder, "overwrite": "false"}
        parts: list[bytes] = []
        for key, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        safe_name = path.name.replace('"', "_")
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{safe_name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
        )
        parts.append(path.read_bytes())
        parts.append(f"\r\n--{boundary}--\r\n".encode())
        answer = self.request("POST", "/upload/image", b"".join(parts),
                              {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if answer.status in BALANCER_GAVE_UP:
            raise ServerUnreachableError(self.url, f"uploading {path.name} answered HTTP {answer.status}")
        if answer.status != 200:
            raise PromptRejectedError(answer.status, {"error": {
                "type": "upload_failed", "message": f"uploading {path.name} failed",
                "details": answer.body.decode(errors="replace")[:500]}})
        saved = answer.json()
        name = saved["name"]
        return f"{saved['subfolder']}/{name}" if saved.get("subfolder") else name

    def queue_prompt(self, prompt: dict[str, Any], client_id: str) -> str:
        """Queue an API-format prompt; refuses (PromptRejectedError) unless every node was accepted."""
        body = json.dumps({"prompt": prompt, "client_id": client_id}).encode()
        answer = self.request("POST", "/prompt", body, {"Content-Type": "application/json"})
        try:
            payload = answer.json()
        except json.JSONDecodeError:
            if answer.status in BALANCER_GAVE_UP:  # a balancer's own error page: no worker took the prompt
                raise ServerUnreachableError(self.url, f"POST /prompt answered HTTP {answer.status}") from None
            payload = {"error": {"type": "bad_answer", "message": answer.body.decode(errors="replace")[:1000]}}
        if not isinstance(payload, dict):
            payload = {"error": {"type": "bad_answer", "message": str(payload)[:1000]}}
        # A 200 with node_errors means a branch was silently dropped: treat it as a refusal too, and take the
        # rest of the prompt, which the server did queue, off its queue.
        if answer.status != 200 or payload.get("node_errors") or "prompt_id" not in payload:
            if answer.status == 200 and payload.get("prompt_id"):
                self.cancel(str(payload["prompt_id"]))
            raise PromptRejectedError(answer.status, payload)
        self.worker = answer.worker
        return str(payload["prompt_id"])

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The finished prompt's history entry, or None while it is still queued or running."""
        entry = self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            return entry
        return None

    def cancel(self, prompt_id: str) -> None:
        """Take the prompt off the queue, or interrupt it if it is the one running (nothing else is touched)."""
        headers = {"Content-Type": "application/json"}
        self.request("POST", "/queue", json.dumps({"delete": [prompt_id]}).encode(), headers)
        self.request("POST", "/interrupt", json.dumps({"prompt_id": prompt_id}).encode(), headers)

    def download(self, item: dict[str, Any], dest_dir: Path) -> Path:
        """Fetch one output file (a history `{filename, subfolder, type}` item) through /view into dest_dir."""
        query = urllib.parse.urlencode({
            "filename": item["filename"], "subfolder": item.get("subfolder", ""), "type": item.get("type", "output"),
        })
        dest_dir.mkdir(parents=True, exist_ok=True)
        target = dest_dir / Path(str(item["filename"])).name
        partial = target.with_name(target.name + ".part")
        req = urllib.request.Request(f"{self.url}/view?{query}", headers=self.job_headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp, open(partial, "wb") as out:  # noqa: S310
                shutil.copyfileobj(resp, out)
        except urllib.error.HTTPError as err:
            partial.unlink(missing_ok=True)
            raise ServerUnreachableError(self.url, f"/view of {item['filename']} answered HTTP {err.code}") from err
        except NETWORK_ERRORS as err:
            partial.unlink(missing_ok=True)
            raise ServerUnreachableError(self.url, _network_detail(err)) from err
        partial.replace(target)  # a file at `target` is always complete
        return target


def _network_detail(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    return f"{type(err).__name__}: {reason if reason is not None else err}"
