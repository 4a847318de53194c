"""API-format workflows: load one, find nodes by class_type, apply overrides."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import WorkflowError

# Loader node types whose file input --image / --audio set; the pack's loaders first, core's work too.
IMAGE_LOADERS = MappingProxyType({"SonicGuardLoadImage": "image", "LoadImage": "image"})
AUDIO_LOADERS = MappingProxyType({"SonicGuardLoadAudio": "audio_file", "LoadAudio": "audio"})
GENERATOR_TYPES = ("SonicGuardGenerate", "SonicGuardPlan")

# Named overrides -> the generator input they set.
GENERATOR_INPUTS = MappingProxyType({
    "min_resolution": "min_resolution",
    "steps": "inference_steps",
    "seed": "seed",
    "duration": "duration",
    "policy": "memory_policy",
    "preset": "preset",
})


@dataclass(frozen=True)
class Overrides:
    """What to change in a workflow before it is queued. None leaves the workflow's own value."""

    image: Path | None = None
    audio: Path | None = None
    min_resolution: int | None = None
    steps: int | None = None
    seed: int | None = None
    duration: float | None = None
    policy: str | None = None
    preset: str | None = None
    sets: tuple[tuple[str, str, Any], ...] = field(default_factory=tuple)  # (node id or class_type, input, value)

    def generator_values(self) -> dict[str, Any]:
        return {GENERATOR_INPUTS[name]: getattr(self, name) for name in GENERATOR_INPUTS
                if getattr(self, name) is not None}

    def fingerprint_data(self) -> dict[str, Any]:
        """Everything but the input files (those are fingerprinted by content)."""
        return {"generator": self.generator_values(), "sets": [list(item) for item in self.sets]}


def load_workflow(path: Path) -> dict[str, Any]:
    """An API-format workflow ({node_id: {class_type, inputs}}) from a JSON file."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise WorkflowError(problem=f"The workflow {path} cannot be read ({err.strerror or err})",
                            expected="a JSON file", fix="check the --workflow path") from err
    except json.JSONDecodeError as err:
        raise WorkflowError(problem=f"The workflow {path} is not valid JSON ({err})",
                            expected="an API-format workflow", fix="export it again with Save (API)") from err
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]  # a saved /prompt request body
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise WorkflowError(problem=f"The workflow {path} is in the editor's format, not the API format",
                            expected="an API-format workflow ({node_id: {class_type, inputs}})",
                            fix="in ComfyUI use Workflow > Export (API), or use workflows/sonic_basic_api.json")
    if not isinstance(data, dict) or not data or not all(
        isinstance(node, dict) and "class_type" in node for node in data.values()
    ):
        raise WorkflowError(problem=f"The workflow {path} has no nodes in the API format",
                            expected="a JSON object {node_id: {class_type, inputs}}",
                            fix="export the workflow with Save (API)")
    return data


def find_nodes(prompt: Mapping[str, Any], class_types: str | Iterable[str]) -> list[str]:
    """Ids of the nodes of these class types, in id order."""
    wanted = {class_types} if isinstance(class_types, str) else set(class_types)
    return sorted((node_id for node_id, node in prompt.items() if node.get("class_type") in wanted), key=_id_order)


def parse_set(text: str) -> tuple[str, str, Any]:
    """`NODE.input=value` (NODE: a node id or a class_type); the value is JSON when it parses, else a string."""
    target, sep, raw = text.partition("=")
    node, dot, input_name = target.strip().rpartition(".")
    if not sep or not dot or not node or not input_name:
        raise WorkflowError(problem=f"--set {text!r} is not of the form NODE.input=value",
                            expected="e.g. --set 4.inference_steps=10 or --set SonicGuardGenerate.seed=7",
                            fix="name the node (id or class_type), a dot, the input, '=' and the value")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return node, input_name, value


def set_input(prompt: dict[str, Any], node: str, input_name: str, value: Any) -> list[str]:
    """Set one input on the node with that id, or on every node of that class_type; the ids changed."""
    targets = [node] if node in prompt else find_nodes(prompt, node)
    if not targets:
        classes = sorted({str(n.get("class_type")) for n in prompt.values()})
        raise WorkflowError(problem=f"No node has the id or class_type {node!r}",
                            expected=f"a node id ({', '.join(sorted(prompt, key=_id_order))}) or a class_type "
                            f"({', '.join(classes)})", fix="check the name in the workflow JSON")
    for node_id in targets:
        prompt[node_id].setdefault("inputs", {})[input_name] = value
    return targets


def apply_overrides(workflow: Mapping[str, Any], overrides: Overrides,
                    uploaded: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A copy of the workflow with the overrides applied.

    `uploaded` maps "image" / "audio" to the names the server gave the uploaded files.
    """
    prompt = copy.deepcopy(dict(workflow))
    uploaded = uploaded or {}
    for key, loaders in (("image", IMAGE_LOADERS), ("audio", AUDIO_LOADERS)):
        if key in uploaded:
            _set_on_single(prompt, loaders, uploaded[key], f"--{key}")
    values = overrides.generator_values()
    if values:
        generators = find_nodes(prompt, GENERATOR_TYPES)
        if not generators:
            raise WorkflowError(problem="The workflow has no Sonic Generate node to apply "
                                f"{', '.join(values)} to", expected=f"a node of type {GENERATOR_TYPES[0]}",
                                fix="use --set NODE.input=value for other workflows")
        for node_id in generators:
            prompt[node_id].setdefault("inputs", {}).update(values)
    for node, input_name, value in overrides.sets:
        set_input(prompt, node, input_name, value)
    return prompt


def node_types(prompt: Mapping[str, Any]) -> dict[str, str]:
    return {node_id: str(node.get("class_type")) for node_id, node in prompt.items()}


def _set_on_single(prompt: dict[str, Any], loaders: Mapping[str, str], value: str, option: str) -> None:
    nodes = find_nodes(prompt, loaders)
    if len(nodes) != 1:
        found = "none" if not nodes else f"{len(nodes)} ({', '.join(nodes)})"
        kinds = " or ".join(loaders)
        raise WorkflowError(problem=f"{option} needs exactly one {kinds} node in the workflow; found {found}",
                            expected=f"one {kinds} node",
                            fix="upload the files yourself and set each node with --set NODE.input=NAME")
    node = prompt[nodes[0]]
    node.setdefault("inputs", {})[loaders[node["class_type"]]] = value


def _id_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)
