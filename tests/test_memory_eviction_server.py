"""Inside a real ComfyUI server, a model another node left loaded is evicted (and reported) before the Sonic run
is made smaller.

The server runs on the CPU with the pack's cap (SONIC_GUARD_FREE_MEMORY_BYTES), which bounds what the server's
loaded models and a run hold together, so "loaded" means something on the CPU too. A test-only custom node loads
a large module through ComfyUI's own model management (`load_models_gpu`, like an upscaler or a TTS node would)
and keeps it referenced. The cap fits the Sonic run as requested only if that module is unloaded: without
eviction the guard would apply levers or lower the resolution.
"""

from __future__ import annotations

import json
import math
import urllib.error
from pathlib import Path

import pytest
from comfy_host import ComfyServer, execution_error
from conftest import ALL_NODE_IDS, server_base_dir
from workflow_files import api_workflow, fast_prompt

HOG_NODE = "SonicGuardTestMemoryHog"
HOG_SOURCE = '''
"""Test only: holds a large module loaded through ComfyUI's model management, as another model pack would."""
import comfy.model_management as mm
import comfy.model_patcher
import torch

HELD = []  # a real pack keeps its model in the node cache; the tests run with --cache-none


class HogModel(torch.nn.Module):
    def __init__(self, mib):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(mib * 2**20 // 4), requires_grad=False)


class MemoryHog:
    CATEGORY = "testing"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "load"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mib": ("INT", {"default": 256, "min": 1, "max": 1 << 20})}}

    def load(self, mib):
        patcher = comfy.model_patcher.ModelPatcher(HogModel(mib), load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        mm.load_models_gpu([patcher], force_full_load=True)
        HELD.append(patcher)
        loaded = sum(m.model_loaded_memory() for m in mm.current_loaded_models if m.model is patcher)
        return {"ui": {"text": [str(loaded)]}, "result": (str(loaded),)}


NODE_CLASS_MAPPINGS = {"__NODE__": MemoryHog}
'''.replace("__NODE__", HOG_NODE)
FAST = {"min_resolution": 128, "inference_steps": 2, "duration": 1.0, "interpolation": "none"}


def cap_and_hog(model_root: Path) -> tuple[int, int]:
    """A cap that fits the fast run as requested (20 % above its budget need) and a module that leaves too
    little of it when it stays loaded (half the cap)."""
    import torch

    from sonic_guard.job import model_configs_of
    from sonic_guard.memory.estimator import MemoryEstimator
    from sonic_guard.memory.plan import RunRequest
    from sonic_guard.memory.planner import DEFAULT_SAFETY_MARGIN, plan_run
    from sonic_guard.models.checkpoints import load_sonic_models

    estimator = MemoryEstimator(model_configs_of(load_sonic_models(model_root, with_rife=False)), device_type="cpu")
    request = RunRequest(
        image_width=FAST["min_resolution"], image_height=FAST["min_resolution"],
        min_resolution=FAST["min_resolution"], inference_steps=FAST["inference_steps"],
        audio_seconds=FAST["duration"], interpolate=False, dtype=str(torch.float32).removeprefix("torch."),
        attention="flash",
    )
    need = plan_run(request, 2**40, estimator, policy="off").estimate.peak_bytes / (1 - DEFAULT_SAFETY_MARGIN)
    cap = int(need * 1.2)
    return cap, math.ceil(cap * 0.5 / 2**20)


@pytest.fixture(scope="module")
def hog_server(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path, speech_wav: Path, portrait_png: Path):
    base = server_base_dir(tmp_path_factory.mktemp("comfy_evict"), tiny_models, speech_wav, portrait_png)
    hog_pack = base / "custom_nodes" / "sonic_guard_test_hog"
    hog_pack.mkdir(parents=True)
    (hog_pack / "__init__.py").write_text(HOG_SOURCE)
    cap, hog_mib = cap_and_hog(base / "models" / "sonic" / "tiny-sonic")
    server = ComfyServer.start(base, extra_args=["--cache-none"], required_nodes=[*ALL_NODE_IDS, HOG_NODE],
                               env={"SONIC_GUARD_FREE_MEMORY_BYTES": str(cap)})
    server.cap, server.hog_mib = cap, hog_mib
    try:
        yield server
    finally:
        server.stop()


def sonic_prompt() -> dict:
    prompt = fast_prompt(api_workflow("sonic_basic"))
    for node in prompt.values():
        if node["class_type"] == "SonicGuardGenerate":
            node["inputs"].update(FAST, memory_policy="auto", preset="custom")
    return prompt


def report_of(history: dict) -> dict:
    return json.loads(next(
        text for output in history["outputs"].values() for text in output.get("text", []) if text.startswith("{")
    ))


def test_a_resident_model_is_evicted_instead_of_downgrading(hog_server: ComfyServer) -> None:
    hog = hog_server.run({"1": {"class_type": HOG_NODE, "inputs": {"mib": hog_server.hog_mib}}})
    assert execution_error(hog) is None, execution_error(hog)
    held = int(next(t for o in hog["outputs"].values() for t in o.get("text", [])))
    assert held >= hog_server.hog_mib * 2**20 * 0.99, f"the module did not load through model management: {held}"

    history = hog_server.run(sonic_prompt())
    assert execution_error(history) is None, execution_error(history) or hog_server.log_tail(60)
    report = report_of(history)
    assert report["downgrades"] == [], report["downgrades"]
    assert report["plan"]["min_resolution"] == FAST["min_resolution"]
    assert report["evictable_bytes_before"] >= held, report
    evicted = [e for e in report["evictions"] if e["model"] == "HogModel"]
    assert evicted and evicted[0]["freed_bytes"] >= held * 0.99, report["evictions"]
    assert any(lever.startswith("evicted: HogModel, ") for lever in report["levers_applied"]), report
    assert any("ComfyUI can evict (HogModel" in note for note in report["notes"]), report["notes"]
    # The editor hears it (toast), and so do the fleet's metrics and health endpoint.
    toasts = [e["data"]["message"] for e in history["_events"] if e["type"] == "sonic_guard.evicted"]
    assert any(message.startswith("evicted: HogModel") for message in toasts), toasts
    with hog_server.request("/sonic/metrics") as response:
        metrics = response.read().decode()
    assert "sonic_evictions_total 1.0" in metrics, metrics[-2000:]
    assert health(hog_server)["recoveries"]["evictions"] == 1


def health(server: ComfyServer) -> dict:
    """/sonic/health answers 503 (degraded) on a machine without a GPU; the body is the same snapshot."""
    try:
        with server.request("/sonic/health") as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())
