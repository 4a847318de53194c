"""Every UI-format example workflow, opened in the real editor (headless Chromium): no missing nodes, the
editor turns it into exactly the API-format file, and it queues from the page."""

from __future__ import annotations

import time

import pytest
from comfy_host import ComfyServer
from web_browser import dumps, editor_page, load_graph, missing_node_dialog, screenshot, wait_for
from workflow_files import CASES, api_workflow, fast_inputs, ui_workflow

OFFLINE_PACK_LOOKUP = "api.comfy.org/nodes?node_id=sonic-guard"


@pytest.fixture(scope="module")
def page(comfy_server: ComfyServer):
    # The shared server's /history holds the hardening tests' prompts; one with a NaN setting (ComfyUI's range
    # check lets NaN through) is served as bare `NaN`, which the editor's JSON parser rejects on every queue-panel
    # reload. Start from an empty history so the console check below sees only what the workflows cause.
    comfy_server.post_json("/history", {"clear": True})
    with editor_page(comfy_server.url) as page:
        yield page
    # The generations queued from the page are not needed to finish: free the shared server for other tests.
    comfy_server.post_json("/queue", {"clear": True})
    comfy_server.post_json("/interrupt", {})


def graph_to_prompt(page) -> dict:
    return page.evaluate("async () => (await app.graphToPrompt()).output")


def apply_fast_widgets(page, changes_by_node: dict[str, dict]) -> None:
    page.evaluate(
        """(changes) => { for (const [id, values] of Object.entries(changes)) {
             const node = app.graph.getNodeById(Number(id));
             for (const [name, value] of Object.entries(values)) {
               const w = node.widgets.find(w => w.name === name); w.value = value;
               w.callback?.(value, app.canvas, node); } } }""",
        changes_by_node,
    )


@pytest.mark.parametrize("case", CASES)
def test_ui_workflow_loads_matches_its_api_file_and_queues(comfy_server: ComfyServer, page, case: str) -> None:
    graph = ui_workflow(case)
    assert graph["version"] == 0.4 and graph["nodes"] and "links" in graph
    page.sonic_console.clear()
    load_graph(page, graph)
    time.sleep(1.0)
    assert missing_node_dialog(page) is None
    # A clean console: the nodes carry their pack id (cnr_id), so the editor asks the registry once for the pack
    # instead of once per node name; offline (here) that one request is refused by the page's own CSP.
    errors = [m for m in page.sonic_console if m.startswith("error") and OFFLINE_PACK_LOOKUP not in m]
    assert errors == [], errors
    types = page.evaluate("app.graph.nodes.map(n => n.type)")
    registered = set(page.evaluate("Object.keys(LiteGraph.registered_node_types)"))
    assert sorted(types) == sorted(node["type"] for node in graph["nodes"]) and set(types) <= registered

    # What the editor would send is the API-format file, node for node and value for value.
    expected = api_workflow(case)
    produced = graph_to_prompt(page)
    assert set(produced) == set(expected), (sorted(produced), sorted(expected))
    for node_id, node in expected.items():
        assert produced[node_id]["class_type"] == node["class_type"]
        assert produced[node_id]["inputs"] == node["inputs"], dumps([produced[node_id], node])

    changes = {node_id: fast_inputs(node["class_type"], node["inputs"]) for node_id, node in expected.items()}
    apply_fast_widgets(page, {k: v for k, v in changes.items() if v})
    idle = lambda: not any(comfy_server.get_json("/queue").values())  # noqa: E731 - the previous case's cancel
    wait_for(idle, timeout_s=120, what="the previous case's generation to stop")
    before = set(comfy_server.get_json("/history"))
    queued = page.evaluate("async () => { const ok = await app.queuePrompt(0); "
                           "return {ok, errors: app.lastNodeErrors ?? null}; }")
    # queuePrompt answers !lastNodeErrors, and the server's "no errors" is {}: read the errors themselves.
    assert not queued["errors"], dumps(queued)
    dialogs = page.evaluate("[...document.querySelectorAll('.p-dialog')].map(d => d.textContent)")
    assert dialogs == [], dialogs
    screenshot(page, f"workflow_{case}.png")

    def accepted() -> bool:
        queue = comfy_server.get_json("/queue")
        history = set(comfy_server.get_json("/history")) - before
        return bool(queue["queue_running"] or queue["queue_pending"] or history)

    wait_for(accepted, timeout_s=30, what=f"{case} queued from the page")
    if case == "sonic_plan_only":
        # Planning is quick: this one runs to the end, and its answer comes back to the page's history.
        def finished() -> dict | None:
            new = {k: v for k, v in comfy_server.get_json("/history").items() if k not in before}
            return next(iter(new.values()), None)

        entry = wait_for(finished, timeout_s=120, what="the plan-only workflow to finish")
        assert entry["status"]["status_str"] == "success", dumps(entry["status"])
    else:
        comfy_server.post_json("/queue", {"clear": True})
        comfy_server.post_json("/interrupt", {})
