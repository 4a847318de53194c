"""The editor extension in headless Chromium against the real ComfyUI server: it loads, the pre-flight badge
follows the resolution widget, the GPU readout is live, and every node has a help page."""

from __future__ import annotations

import json
import re
import urllib.error

import pytest
from comfy_host import REPO, ComfyServer
from conftest import ALL_NODE_IDS
from web_browser import dumps, editor_page, screenshot

PACK = "sonic-guard"
JS_FILES = sorted(p.name for p in (REPO / "web" / "js").glob("*.js"))
BADGE_SETTLED = (
    "(id) => { const b = app.graph.getNodeById(id)?.sonicGuardBadge; return !!b && b.verdict !== 'pending'; }"
)


@pytest.fixture(scope="module")
def page(comfy_server: ComfyServer):
    with editor_page(comfy_server.url) as page:
        page.evaluate("() => app.graph.clear()")
        yield page


def badge_of(page, node_id: int) -> dict:
    return page.evaluate("(id) => { const b = app.graph.getNodeById(id).sonicGuardBadge; "
                         "return {verdict: b.verdict, text: b.text}; }", node_id)


def set_widget(page, node_id: int, name: str, value: object) -> None:
    """Change a widget the way the canvas does: set the value, then call its callback."""
    page.evaluate(
        """([id, name, value]) => { const node = app.graph.getNodeById(id);
             const w = node.widgets.find(w => w.name === name); w.value = value;
             w.callback?.(value, app.canvas, node); }""",
        [node_id, name, value],
    )


def test_extension_files_and_nodes_load(comfy_server: ComfyServer, page) -> None:
    served = comfy_server.get_json("/extensions")
    assert sorted(p.rsplit("/", 1)[-1] for p in served if f"/{PACK}/" in p) == JS_FILES
    names = page.evaluate("app.extensions.map(e => e.name)")
    assert "sonic_guard.editor" in names
    registered = page.evaluate("Object.keys(LiteGraph.registered_node_types)")
    assert set(ALL_NODE_IDS) <= set(registered)
    errors = [line for line in page.sonic_console if "sonic_guard" in line and line.startswith("error")]
    assert errors == []


def test_badge_follows_the_resolution_widget(comfy_server: ComfyServer, page) -> None:
    node_id = page.evaluate("""() => { const node = LiteGraph.createNode('SonicGuardGenerate');
        node.pos = [420, 160]; app.graph.add(node); return node.id; }""")
    page.wait_for_function(BADGE_SETTLED, arg=node_id, timeout=60_000)
    small = badge_of(page, node_id)
    set_widget(page, node_id, "min_resolution", 2048)
    assert badge_of(page, node_id)["verdict"] == "pending"  # never the old verdict for the new value
    page.wait_for_function(BADGE_SETTLED, arg=node_id, timeout=120_000)
    large = badge_of(page, node_id)
    screenshot(page, "web_badge_2048.png")
    assert small["verdict"] in ("fits", "downgrade", "refuse"), small
    assert large["verdict"] in ("downgrade", "refuse"), large
    assert large["text"] != small["text"]
    # What the badge shows is what the pack's planner answers for the same widgets (full-size model).
    status, answer = comfy_server.post_json("/sonic/plan", {"min_resolution": 2048, "inference_steps": 25})
    assert status == 200 and answer["badge"] == large["text"], dumps(answer)
    numbers = [int(n) for n in re.findall(r"(\d+)x\d+", large["text"])]
    assert all(n < 2048 for n in numbers)


def test_new_generator_starts_with_a_fixed_seed(page) -> None:
    """Resuming a long job needs the same seed on the rerun; ComfyUI's default for seeds is "randomize"."""
    controls = page.evaluate("""() => { const node = LiteGraph.createNode('SonicGuardGenerate'); app.graph.add(node);
        return node.widgets.filter(w => w.name === 'control_after_generate').map(w => w.value); }""")
    assert controls == ["fixed"]


def test_gpu_readout_is_live(page) -> None:
    page.wait_for_function(
        "() => (document.getElementById('sonic-guard-gpu-readout')?.dataset.source ?? '') === 'health'",
        timeout=30_000,
    )
    first = page.evaluate("document.getElementById('sonic-guard-gpu-readout').dataset.updated")
    text = page.evaluate("document.getElementById('sonic-guard-gpu-readout').textContent")
    assert text.startswith("Sonic GPU: ")
    assert "n/a" in text or "GiB free" in text  # this machine has no NVIDIA GPU: it says so
    page.wait_for_function(
        "(t) => document.getElementById('sonic-guard-gpu-readout').dataset.updated !== t", arg=first,
        timeout=15_000,
    )


@pytest.mark.parametrize("node_id", ALL_NODE_IDS)
def test_every_node_has_a_help_page_covering_its_inputs_and_outputs(comfy_server: ComfyServer, node_id: str) -> None:
    try:
        with comfy_server.request(f"/extensions/{PACK}/docs/{node_id}.md") as response:
            text = response.read().decode()
    except urllib.error.HTTPError as error:
        pytest.fail(f"help page for {node_id} not served: {error}")
    info = comfy_server.get_json(f"/object_info/{node_id}")[node_id]
    inputs = [name for group in ("required", "optional") for name in info["input"].get(group, {})]
    headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert {"Inputs", "Outputs", "Memory behaviour"} <= set(headings), headings
    for name in inputs:
        assert f"**{name}" in text or f"{name}," in text or f", {name}**" in text, f"{node_id}: input {name}"
    outputs_section = text.split("## Outputs", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^- \*\*(\w+)\*\*", outputs_section, flags=re.MULTILINE)
    assert len(documented) == len(info["output"]), (node_id, documented, info["output_name"])
    for name in info["output_name"]:
        if not name.isupper():  # an unnamed output shows its type (STRING, FLOAT) in object_info
            assert name in documented, f"{node_id}: output {name}"
    assert len(text) > 800 and json.dumps(info["display_name"])
