"""A real downgraded run shows the downgrade toast in the editor.

This machine has ~20 GB of free host RAM, so the run is made not to fit by promising the memory guard less:
a dedicated server started with SONIC_GUARD_FREE_MEMORY_BYTES (the pack's cap for shared GPUs). The cap is set
just below what the small model at 128 px, 1 s of speech, is predicted to need as requested (the pack's own
estimator, run here on the same model files), so the run fits only with memory levers: the planner changes it
and the server sends `sonic_guard.downgraded`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from comfy_host import ComfyServer, execution_error
from conftest import ALL_NODE_IDS, server_base_dir
from web_browser import dumps, editor_page, load_graph, screenshot, wait_for
from workflow_files import fast_inputs, ui_workflow

FAST = {"min_resolution": 128, "inference_steps": 2, "duration": 1.0}
TOAST_TEXT = "() => [...document.querySelectorAll('.p-toast-message')].map(e => e.textContent).join('\\n')"


def cap_needing_levers(model_root: Path) -> int:
    """Free bytes at which the fast run fits only after levers: 95 % of the requested plan's budget need."""
    import torch

    from sonic_guard.job import model_configs_of
    from sonic_guard.memory.estimator import MemoryEstimator
    from sonic_guard.memory.plan import RunRequest
    from sonic_guard.memory.planner import DEFAULT_SAFETY_MARGIN, plan_run
    from sonic_guard.models.checkpoints import load_sonic_models

    # The server runs on the CPU: its estimator models the host allocator (no CUDA overhead), so must this one.
    estimator = MemoryEstimator(model_configs_of(load_sonic_models(model_root, with_rife=False)), device_type="cpu")
    request = RunRequest(
        image_width=FAST["min_resolution"], image_height=FAST["min_resolution"], min_resolution=FAST["min_resolution"],
        inference_steps=FAST["inference_steps"], audio_seconds=FAST["duration"], interpolate=False,
        dtype=str(torch.float32).removeprefix("torch."), attention="flash",
    )
    requested = plan_run(request, 2**40, estimator, policy="off").estimate.peak_bytes
    cap = int(requested / (1 - DEFAULT_SAFETY_MARGIN) * 0.95)
    decision = plan_run(request, cap, estimator, policy="auto")  # raises if even the levers cannot fit it
    assert decision.plan.levers_applied or decision.plan.downgrades
    return cap


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path, speech_wav: Path,
                  portrait_png: Path):
    base = server_base_dir(tmp_path_factory.mktemp("comfy_capped"), tiny_models, speech_wav, portrait_png)
    cap = cap_needing_levers(base / "models" / "sonic" / "tiny-sonic")
    server = ComfyServer.start(base, extra_args=["--cache-none"], required_nodes=ALL_NODE_IDS,
                               env={"SONIC_GUARD_FREE_MEMORY_BYTES": str(cap)})
    server.free_memory_cap = cap
    try:
        yield server
    finally:
        server.stop()


def test_the_free_memory_cap_reaches_the_planner(capped_server: ComfyServer) -> None:
    status, answer = capped_server.post_json("/sonic/plan", {"min_resolution": 128, "model_folder": "tiny-sonic"})
    assert status == 200, answer
    free = answer.get("plan", {}).get("free_bytes")
    if free is None:  # refused: the message names the free memory
        assert f"{capped_server.free_memory_cap / 2**30:.2f} GiB free" in answer.get("error", ""), dumps(answer)
    else:
        assert free <= capped_server.free_memory_cap, (
            "SONIC_GUARD_FREE_MEMORY_BYTES is not honoured: wire sonic_guard/memory/free_memory_cap.capped_free_memory "
            f"into comfy_bridge.guard_free_bytes. /sonic/plan says free_bytes={free}"
        )


def test_a_downgraded_run_shows_the_downgrade_toast(capped_server: ComfyServer) -> None:
    graph = ui_workflow("sonic_basic")
    with editor_page(capped_server.url) as page:
        load_graph(page, graph)
        changes = {str(node["id"]): fast_inputs(node["type"], {}) for node in graph["nodes"]}
        page.evaluate(
            """(changes) => { for (const [id, values] of Object.entries(changes)) {
                 const node = app.graph.getNodeById(Number(id));
                 for (const [name, value] of Object.entries(values)) {
                   const w = node.widgets.find(w => w.name === name); w.value = value;
                   w.callback?.(value, app.canvas, node); } } }""",
            changes,
        )
        page.evaluate("() => { window.sonicGuardSeen = []; for (const type of ['sonic_guard.downgraded', "
                      "'sonic_guard.refused']) app.api?.addEventListener?.(type, (e) => "
                      "window.sonicGuardSeen.push({type, detail: e.detail})); }")
        before = set(capped_server.get_json("/history"))
        queued = page.evaluate("async () => { await app.queuePrompt(0); return app.lastNodeErrors ?? null; }")
        assert not queued, dumps(queued)
        toast = wait_for(lambda: "downgraded" in page.evaluate(TOAST_TEXT) and page.evaluate(TOAST_TEXT),
                         timeout_s=420, interval_s=1.0, what="the downgrade toast")
        screenshot(page, "web_downgrade_toast.png")

    assert "Sonic Guard downgraded the run" in toast
    assert "levers:" in toast or "downgrades:" in toast, toast  # the toast says what was changed

    def finished() -> dict | None:
        new = {k: v for k, v in capped_server.get_json("/history").items() if k not in before}
        entry = next(iter(new.values()), None)
        return entry if entry and entry.get("status", {}).get("completed") is not None else None

    entry = wait_for(finished, timeout_s=300, interval_s=1.0, what="the downgraded run to finish")
    error = execution_error(entry)
    assert error is None, error and error["exception_message"]
    report = json.loads(next(text for output in entry["outputs"].values() for text in output.get("text", [])
                             if text.startswith("{")))
    assert report["levers_applied"] or report["downgrades"]  # the run really was changed to fit
