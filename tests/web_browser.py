"""Headless Chromium (Debian's, driven by pip playwright) on a real ComfyUI server's editor, for the web tests."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from comfy_host import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = REPO / "tests" / "artifacts"
EDITOR_READY = "!!(window.app && window.app.graph && window.LiteGraph && LiteGraph.registered_node_types['{node}'])"


@contextmanager
def editor_page(url: str, *, wait_node: str = "SonicGuardGenerate", timeout_s: float = 120.0) -> Iterator:
    """A page with ComfyUI's editor loaded from `url` (fresh profile), closed afterwards."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="sonic-chromium-") as profile, sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 900},
        )
        try:
            page = context.new_page()
            page.sonic_console = []
            page.on("console", lambda message: page.sonic_console.append(f"{message.type}: {message.text}"))
            page.goto(url)
            page.wait_for_function(EDITOR_READY.format(node=wait_node), timeout=timeout_s * 1000)
            yield page
        finally:
            context.close()


def load_graph(page, graph: dict) -> None:
    """Load a UI-format workflow the way the editor's Open does."""
    page.evaluate("(graph) => app.loadGraphData(graph)", graph)


def missing_node_dialog(page) -> str | None:
    """Text of the editor's missing-nodes dialog, if one is open."""
    return page.evaluate(
        """() => { const d = [...document.querySelectorAll('.p-dialog')]
             .find(e => /missing/i.test(e.textContent)); return d ? d.textContent : null; }"""
    )


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


def wait_for(predicate, timeout_s: float, interval_s: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def dumps(value: object) -> str:
    return json.dumps(value, indent=1, default=str)[:3000]
