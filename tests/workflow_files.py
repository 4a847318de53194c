"""The example workflows and the overrides that make them quick on the small model."""

from __future__ import annotations

import json
from pathlib import Path

from comfy_host import REPO

WORKFLOWS = REPO / "workflows"
CASES = ("sonic_basic", "sonic_lowvram", "sonic_long_audio", "sonic_profiled", "sonic_plan_only")
# Small model, 128 px, 2 steps, 1 s of the speech, no interpolation: a generation in well under a minute.
FAST_GENERATOR = {"min_resolution": 128, "inference_steps": 2, "duration": 1.0, "interpolation": "none"}


def api_workflow(case: str) -> dict:
    return json.loads((WORKFLOWS / f"{case}_api.json").read_text())


def ui_workflow(case: str) -> dict:
    return json.loads((WORKFLOWS / f"{case}_ui.json").read_text())


def fast_inputs(class_type: str, inputs: dict) -> dict:
    """The overrides for one node's inputs (API-format names)."""
    changes: dict = {}
    if class_type == "SonicGuardModelLoader":
        changes["model_folder"] = "tiny-sonic"
    if class_type == "SonicGuardGenerate":
        changes.update(FAST_GENERATOR)
        if inputs.get("segment_seconds"):
            changes.update(segment_seconds=2.0, duration=3.0)  # two segments: the segment path really runs
    return changes


def fast_prompt(prompt: dict) -> dict:
    for node in prompt.values():
        node["inputs"].update(fast_inputs(node["class_type"], node["inputs"]))
    return prompt


def all_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))
