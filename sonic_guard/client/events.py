"""Follow one prompt over ComfyUI's websocket until it finishes, fails or is interrupted."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websocket

from .api import ComfyClient
from .errors import ExecutionFailedError, RunTimeoutError, ServerUnreachableError

logger = logging.getLogger(__name__)

# How long one websocket read waits before the client checks /history in case it missed the end.
POLL_INTERVAL_S = 5.0


@dataclass(frozen=True)
class ProgressEvent:
    """A step of one node: `value` of `max` (ComfyUI's `progress` message)."""

    node_id: str
    value: int
    maximum: int


@dataclass
class RunRecord:
    """What the websocket said about one prompt, and its history entry once it finished."""

    prompt_id: str
    history: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    nodes_started: list[str] = field(default_factory=list)


ProgressCallback = Callable[[ProgressEvent | None, str | None], None]


class EventStream:
    """The websocket of one client id; open it *before* queueing so no message is missed."""

    def __init__(self, client: ComfyClient, client_id: str, connect_timeout_s: float = 10.0) -> None:
        self.client = client
        self.client_id = client_id
        try:
            self.ws = websocket.create_connection(
                f"{client.websocket_url}/ws?clientId={client_id}", timeout=connect_timeout_s,
                header=[f"{name}: {value}" for name, value in client.job_headers.items()],
            )
        except (OSError, websocket.WebSocketException) as err:
            raise ServerUnreachableError(client.url, f"websocket: {type(err).__name__}: {err}") from err
        self.ws.settimeout(POLL_INTERVAL_S)

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def follow(self, prompt_id: str, on_progress: ProgressCallback | None = None,
               timeout_s: float = 3600.0) -> RunRecord:
        """Wait for the end of `prompt_id`; raises ExecutionFailedError on a node error or an interrupt."""
        record = RunRecord(prompt_id)
        deadline = time.monotonic() + timeout_s
        next_check = time.monotonic() + POLL_INTERVAL_S
        while time.monotonic() < deadline:
            message = self._receive()
            if message is None or time.monotonic() >= next_check:
                # Now and then ask /history too: it knows the end even if the websocket never told us.
                next_check = time.monotonic() + POLL_INTERVAL_S
                if self._finished_from_history(record):
                    return record
                if message is None:
                    continue
            kind, data = message.get("type"), message.get("data") or {}
            if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
                continue  # other prompts, and status broadcasts (queue length of the whole server)
            record.messages.append(message)
            if kind == "progress" and on_progress is not None:
                on_progress(ProgressEvent(str(data.get("node")), int(data.get("value", 0)),
                                          int(data.get("max", 1) or 1)), None)
            elif kind == "executing" and data.get("node") is not None:
                record.nodes_started.append(str(data["node"]))
                if on_progress is not None:
                    on_progress(None, str(data["node"]))
            elif kind == "execution_error":
                raise ExecutionFailedError(data)
            elif kind == "execution_interrupted":
                raise ExecutionFailedError({**data, "exception_type": "Interrupted",
                                            "exception_message": "the run was interrupted on the server"})
            elif kind == "execution_success" or (kind == "executing" and data.get("node") is None):
                self._wait_history(record, deadline, timeout_s)
                return record
        raise RunTimeoutError(self.client.url, prompt_id, timeout_s)

    def _receive(self) -> dict[str, Any] | None:
        try:
            raw = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        except (OSError, websocket.WebSocketException) as err:
            raise ServerUnreachableError(self.client.url, f"websocket closed: {type(err).__name__}: {err}") from err
        if not isinstance(raw, str):
            return None  # binary preview frames
        if raw == "":
            # websocket-client answers a closed connection with an empty frame on some versions.
            if not self.ws.connected:
                raise ServerUnreachableError(self.client.url, "websocket closed by the server")
            return None
        try:
            message = json.loads(raw)
        except json.JSONDecodeError:
            logger.debug("Ignored a websocket text that is not JSON: %.200s", raw)
            return None
        return message if isinstance(message, dict) else None

    def _finished_from_history(self, record: RunRecord) -> bool:
        entry = self.client.history(record.prompt_id)
        if entry is None:
            return False
        record.history = entry
        failure = history_error(entry)
        if failure is not None:
            raise ExecutionFailedError(failure)
        return True

    def _wait_history(self, record: RunRecord, deadline: float, timeout_s: float) -> None:
        # The history entry is written right after the final websocket message; give it a moment.
        while time.monotonic() < deadline:
            if self._finished_from_history(record):
                return
            time.sleep(0.2)
        raise RunTimeoutError(self.client.url, record.prompt_id, timeout_s)


def history_error(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The execution_error (or interrupt) recorded in a finished prompt's history, if any."""
    status = entry.get("status") or {}
    for kind, data in status.get("messages") or []:
        if kind == "execution_error":
            return data
        if kind == "execution_interrupted":
            return {**data, "exception_type": "Interrupted", "exception_message": "the run was interrupted"}
    if status.get("status_str") == "error":
        return {"exception_type": "Error", "exception_message": "the server recorded the run as failed"}
    return None
