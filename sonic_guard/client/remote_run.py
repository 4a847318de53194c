"""One run: upload the inputs, apply the overrides, queue, follow the progress, download the outputs."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .api import ComfyClient
from .errors import PromptRejectedError, ServerUnreachableError
from .events import EventStream
from .progress import TextProgress
from .workflow import Overrides, apply_overrides, node_types

logger = logging.getLogger(__name__)


@dataclass
class JobResult:
    """A finished run: where it ran, the files it produced (downloaded), and the pack's report if any."""

    server: str
    prompt_id: str
    outputs: list[Path] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    worker: str | None = None  # the worker a load balancer sent the prompt to, when it names it


def run_workflow(
    client: ComfyClient,
    workflow: Mapping[str, Any],
    overrides: Overrides,
    out_dir: Path,
    *,
    label: str = "sonic",
    progress_stream: TextIO | None = None,
    progress_redraw: bool | None = None,
    timeout_s: float = 3600.0,
    on_queued: Callable[[str], None] | None = None,
) -> JobResult:
    """Run the workflow once on `client`'s server and download its outputs into out_dir.

    Raises PromptRejectedError (validation), ExecutionFailedError (a node failed), ServerUnreachableError
    (no answer, or the server went away mid-run) and RunTimeoutError.
    """
    started = time.monotonic()
    # Check the overrides fit the workflow before anything is uploaded.
    placeholders = {key: "?" for key in ("image", "audio") if getattr(overrides, key) is not None}
    apply_overrides(workflow, overrides, placeholders)
    uploaded = {key: client.upload(getattr(overrides, key)) for key in placeholders}
    prompt = apply_overrides(workflow, overrides, uploaded)
    progress = TextProgress(label, node_types(prompt), progress_stream, redraw=progress_redraw)
    client_id = uuid.uuid4().hex
    prompt_id = ""
    try:
        with EventStream(client, client_id) as events:
            prompt_id = client.queue_prompt(prompt, client_id)
            logger.info("Queued %s on %s as %s", label, client.url, prompt_id)
            if on_queued is not None:
                on_queued(prompt_id)
            record = events.follow(prompt_id, on_progress=progress, timeout_s=timeout_s)
    except KeyboardInterrupt:
        if prompt_id:
            _cancel_quietly(client, prompt_id)
        progress.finish("cancelled")
        raise
    except PromptRejectedError:
        progress.finish("refused by the server")
        raise
    except BaseException:
        progress.finish("failed")
        raise
    result = JobResult(server=client.url, prompt_id=prompt_id, worker=client.worker)
    result.outputs, result.reports = download_outputs(client, record.history, out_dir)
    result.elapsed_s = time.monotonic() - started
    progress.finish(f"done in {result.elapsed_s:.0f} s: {', '.join(p.name for p in result.outputs) or 'no files'}")
    return result


def output_items(history: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The files ({filename, subfolder, type}) and the texts (node id, text) a finished prompt produced."""
    files: list[dict[str, Any]] = []
    texts: list[tuple[str, str]] = []
    for node_id, output in (history.get("outputs") or {}).items():
        for key, items in (output or {}).items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and item.get("filename"):
                    files.append(item)
                elif key == "text" and isinstance(item, str):
                    texts.append((str(node_id), item))
    return files, texts


def download_outputs(client: ComfyClient, history: Mapping[str, Any],
                     out_dir: Path) -> tuple[list[Path], list[dict[str, Any]]]:
    """Download every output file; keep each JSON report a node returned as report_<node>.json next to them."""
    files, texts = output_items(history)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [client.download(item, out_dir) for item in files]
    reports: list[dict[str, Any]] = []
    for node_id, text in texts:
        try:
            report = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(report, dict):
            reports.append(report)
            target = out_dir / f"report_{node_id}.json"
            target.write_text(json.dumps(report, indent=1))
            paths.append(target)
    return paths, reports


def _cancel_quietly(client: ComfyClient, prompt_id: str) -> None:
    try:
        client.cancel(prompt_id)
    except ServerUnreachableError as err:
        logger.warning("Could not cancel %s: %s", prompt_id, err)
