"""What can go wrong when a workflow is sent to a ComfyUI server, each with the exit code the command line uses."""

from __future__ import annotations

import json
from typing import Any

from ..errors import SonicGuardError

EXIT_OK = 0
EXIT_FAILED = 1  # the server ran the workflow and a node failed (or it was interrupted)
EXIT_REJECTED = 2  # the server refused the workflow (validation), or the request itself was wrong
EXIT_UNREACHABLE = 3  # no server answered, or one died on the way


class ClientError(SonicGuardError):
    """Base class of the client's errors."""

    reason = "client"
    exit_code = EXIT_FAILED
    retryable = False


class WorkflowError(ClientError):
    """A workflow file or an override that cannot be applied as given."""

    reason = "bad_workflow"
    exit_code = EXIT_REJECTED


class PromptRejectedError(ClientError):
    """The server answered /prompt with a validation error, or accepted only part of the workflow."""

    reason = "rejected"
    exit_code = EXIT_REJECTED

    def __init__(self, status: int, answer: dict[str, Any]) -> None:
        self.status = status
        self.error = answer.get("error") or {}
        self.node_errors = answer.get("node_errors") or {}
        super().__init__(
            problem=f"The server refused the workflow (HTTP {status}): {describe_rejection(answer)}",
            expected="every node's inputs within their ranges and every required input connected",
            fix="change the values named above (see `python -m sonic_guard.client --help` for the overrides)",
        )


class ExecutionFailedError(ClientError):
    """A node raised while the server ran the workflow (the server's execution_error), or it was interrupted."""

    reason = "execution"

    def __init__(self, details: dict[str, Any]) -> None:
        self.details = details
        self.node_id = str(details.get("node_id", ""))
        self.node_type = str(details.get("node_type", ""))
        self.exception_type = str(details.get("exception_type", ""))
        self.exception_message = str(details.get("exception_message", "")).strip()
        where = f" in node {self.node_id} ({self.node_type})" if self.node_id else ""
        super().__init__(
            problem=f"The run failed{where}: {self.exception_type}: {self.exception_message}",
        )

    @property
    def summary(self) -> str:
        """`exception_type: exception_message`, as the node raised it."""
        return f"{self.exception_type}: {self.exception_message}"


class ServerUnreachableError(ClientError):
    """A server did not answer, refused the connection, or dropped it in the middle of a run."""

    reason = "unreachable"
    exit_code = EXIT_UNREACHABLE
    retryable = True

    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        super().__init__(
            problem=f"The ComfyUI server at {url} cannot be reached ({detail})",
            expected="a running ComfyUI server at that address",
            fix="start the server, check the --server address and port, or wait until it has restarted",
        )


class RunTimeoutError(ClientError):
    """A run did not finish within the time the client was told to wait."""

    reason = "timeout"

    def __init__(self, url: str, prompt_id: str, timeout_s: float) -> None:
        super().__init__(
            problem=f"Prompt {prompt_id} on {url} did not finish within {timeout_s:.0f} s",
            expected="the run to finish within --timeout",
            fix="raise --timeout, or check the server's log for a stuck node",
        )


def describe_rejection(answer: dict[str, Any]) -> str:
    """One readable text from the server's `error` and `node_errors` of a refused prompt."""
    error = answer.get("error") or {}
    parts: list[str] = []
    if isinstance(error, dict):
        head = error.get("message") or error.get("type") or ""
        details = error.get("details") or ""
        parts.append(f"{head}{': ' + details if details else ''}".strip())
    elif error:
        parts.append(str(error))
    node_errors = answer.get("node_errors") or {}
    for node_id, node in sorted(node_errors.items()) if isinstance(node_errors, dict) else []:
        class_type = node.get("class_type", "?") if isinstance(node, dict) else "?"
        errors = node.get("errors", []) if isinstance(node, dict) else []
        for item in errors:
            text = item.get("details") or item.get("message") or json.dumps(item)
            parts.append(f"node {node_id} ({class_type}): [{item.get('type', 'error')}] {text}")
        if not errors:
            parts.append(f"node {node_id} ({class_type}): {json.dumps(node)[:500]}")
    return "; ".join(part for part in parts if part) or json.dumps(answer)[:1000]
