"""Shared fixtures: real inputs (a portrait photo, spoken audio), the small model set, and a real ComfyUI server."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from comfy_host import REPO, ComfyServer


def _load_node_ids():
    # nodes/__init__.py needs ComfyUI; ids.py does not, so load it by path.
    spec = importlib.util.spec_from_file_location("sonic_guard_node_ids", REPO / "nodes" / "ids.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NODE_IDS = _load_node_ids()
ALL_NODE_IDS = NODE_IDS.ALL_NODE_IDS

# Every ComfyUI server the tests start inherits this: small CPU tensors run several times faster on one OpenMP
# thread than on two that wait on each other when anything else is running.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SPEECH_TEXT = "Hello there. This is Sonic Guard speaking a short sentence for the test."


def speak(path: Path, text: str = SPEECH_TEXT, rate_hz: int | None = None) -> Path:
    """Real speech from espeak-ng (optionally resampled by sox)."""
    raw = path.with_suffix(".raw.wav") if rate_hz else path
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
    if rate_hz:
        subprocess.run(["sox", str(raw), "-r", str(rate_hz), str(path)], check=True, capture_output=True)
        raw.unlink()
    return path


def portrait_rgb() -> np.ndarray:
    """A real photograph with one clear frontal face (scikit-image's astronaut)."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak(tmp_path_factory.mktemp("audio") / "speech.wav")


@pytest.fixture(scope="session")
def portrait_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "portrait.png"
    Image.fromarray(portrait_rgb()).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small random model set, written once per session in the official layout."""
    from sonic_guard.models.tiny import write_tiny_model_set

    root = tmp_path_factory.mktemp("models") / "tiny-sonic"
    write_tiny_model_set(root, seed=0)
    return root


def server_base_dir(base: Path, tiny_models: Path, speech_wav: Path, portrait_png: Path) -> Path:
    """A ComfyUI base folder with the small model set as models/sonic/tiny-sonic and the real inputs."""
    (base / "models" / "sonic").mkdir(parents=True)
    shutil.copytree(tiny_models, base / "models" / "sonic" / "tiny-sonic")
    (base / "input").mkdir(exist_ok=True)
    shutil.copy(speech_wav, base / "input" / "speech.wav")
    shutil.copy(portrait_png, base / "input" / "portrait.png")
    return base


@pytest.fixture(scope="session")
def comfy_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: Path, speech_wav: Path, portrait_png: Path
) -> Iterator[ComfyServer]:
    """A real ComfyUI 0.3.75 server with the pack, the small model set and real inputs."""
    base = server_base_dir(tmp_path_factory.mktemp("comfy"), tiny_models, speech_wav, portrait_png)
    # The hardening tests read /sonic/debug/resources (live tensors, the object census): off unless asked for.
    server = ComfyServer.start(base, extra_args=["--cache-none"], required_nodes=ALL_NODE_IDS,
                               env={"SONIC_GUARD_DIAGNOSTICS": "1"})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Small CPU tensors run far faster on one thread when the machine is shared (OpenMP threads wait on
    each other); the real-server tests run in their own processes and are unaffected."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
