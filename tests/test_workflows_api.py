"""Every API-format example workflow, queued on the real ComfyUI server and run on the small model."""

from __future__ import annotations

import json

import pytest
from comfy_host import ComfyServer, execution_error
from conftest import ALL_NODE_IDS
from workflow_files import CASES, all_files, api_workflow, fast_prompt

# sonic_basic_api.json runs in test_server_generation.py (with its video checked); here the others.
RUN_CASES = [case for case in CASES if case != "sonic_basic"]


def test_every_case_has_both_formats_and_only_pack_or_core_nodes(comfy_server: ComfyServer) -> None:
    names = {path.name for path in all_files()}
    for case in CASES:
        assert {f"{case}_api.json", f"{case}_ui.json"} <= names, case
    known = set(comfy_server.get_json("/object_info"))
    for case in CASES:
        for node in api_workflow(case).values():
            assert node["class_type"] in known, (case, node["class_type"])
    used = {node["class_type"] for case in CASES for node in api_workflow(case).values()}
    assert set(ALL_NODE_IDS) <= used  # every node of the pack appears in some example


@pytest.mark.parametrize("case", RUN_CASES)
def test_api_workflow_runs_on_the_small_model(comfy_server: ComfyServer, case: str) -> None:
    prompt = fast_prompt(api_workflow(case))
    history = comfy_server.run(prompt, timeout_s=300)
    error = execution_error(history)
    assert error is None, json.dumps({k: error[k] for k in ("node_type", "exception_message")}, indent=1)
    assert history["status"]["status_str"] == "success"
    outputs = history["outputs"]
    texts = [text for output in outputs.values() for text in output.get("text", [])]
    if case == "sonic_plan_only":
        answer = json.loads(next(t for t in texts if t.lstrip().startswith("{")))
        assert answer["verdict"] in ("fits", "downgrade", "refuse")
        assert answer.get("plan", {}).get("plan", {}).get("width", 1024) <= 1024
    else:
        videos = [item for output in outputs.values() for item in output.get("images", [])
                  if str(item.get("filename", "")).endswith(".mp4")]
        assert len(videos) == 1, outputs
        assert (comfy_server.base / "output" / videos[0]["subfolder"] / videos[0]["filename"]).stat().st_size > 0
    if case == "sonic_profiled":
        readouts = [text for text in texts if text.startswith("GPU memory readout")]
        assert len(readouts) == 2  # before and after the generation
