"""The headless client against a real ComfyUI 0.3.75 server: a run, a refusal, a node failure, no server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from comfy_host import REPO, ComfyServer, free_port
from conftest import speak
from PIL import Image

from sonic_guard.client import (
    BatchRunner,
    ComfyClient,
    Overrides,
    PromptRejectedError,
    jobs_from_folder,
    run_workflow,
)

# The small model, 128 px, 2 steps, no frame interpolation: the quickest real generation.
TINY = ["--set", "1.model_folder=tiny-sonic", "--set", "1.load_rife=false", "--set", "4.interpolation=none",
        "--min-resolution", "128", "--steps", "2"]


def client_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "sonic_guard.client", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Short audio keeps the generation on the small model fast.
    return speak(tmp_path_factory.mktemp("client_audio") / "hello.wav", "Hello there.")


def ffprobe_kinds(path: Path) -> list[str]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
                         check=True, capture_output=True, text=True)
    return sorted(stream["codec_type"] for stream in json.loads(out.stdout)["streams"])


def test_cli_runs_the_basic_workflow_and_downloads_the_video(
    comfy_server: ComfyServer, portrait_png: Path, short_speech: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = client_cli("--server", comfy_server.url, "--image", str(portrait_png), "--audio", str(short_speech),
                      "--out", str(out), "--seed", "3", *TINY)
    assert done.returncode == 0, done.stderr
    videos = sorted(out.glob("*.mp4"))
    assert len(videos) == 1, (list(out.iterdir()), done.stderr)
    assert ffprobe_kinds(videos[0]) == ["audio", "video"]
    assert str(videos[0]) in done.stdout
    report = json.loads((out / "report_4.json").read_text())
    assert report["outcome"] == "success"
    # The progress bar followed the sampler's steps over the websocket.
    assert re.search(r"\[#{30}\] (\d+)/\1 node 4 \(SonicGuardGenerate\)", done.stderr), done.stderr
    # The inputs went through /upload/image into the server's input folder.
    uploaded = comfy_server.base / "input" / "sonic_client"
    assert (uploaded / portrait_png.name).read_bytes() == portrait_png.read_bytes()
    assert (uploaded / short_speech.name).read_bytes() == short_speech.read_bytes()


def test_cli_shows_the_validation_error_and_exits_2(comfy_server: ComfyServer, tmp_path: Path) -> None:
    done = client_cli("--server", comfy_server.url, "--out", str(tmp_path), "--set", "1.model_folder=tiny-sonic",
                      "--steps", "1000", timeout=120)
    assert done.returncode == 2, done.stderr
    assert "node 4 (SonicGuardGenerate): value_bigger_than_max" in done.stderr, done.stderr
    assert "inference_steps" in done.stderr
    assert "prompt_outputs_failed_validation: Prompt outputs failed validation" in done.stderr
    assert not list(tmp_path.iterdir())


def test_cli_shows_the_node_exception_and_exits_1(
    comfy_server: ComfyServer, short_speech: Path, tmp_path: Path
) -> None:
    grey = tmp_path / "grey.png"
    Image.new("RGB", (256, 256), (128, 128, 128)).save(grey)
    done = client_cli("--server", comfy_server.url, "--image", str(grey), "--audio", str(short_speech),
                      "--out", str(tmp_path / "out"), *TINY)
    assert done.returncode == 1, done.stderr
    assert "NoFaceError: No face was found in the image" in done.stderr, done.stderr
    assert "node 4 SonicGuardGenerate" in done.stderr


def test_cli_without_a_server_exits_3(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = client_cli("--server", url, "--out", str(tmp_path), timeout=60)
    assert done.returncode == 3, done.stderr
    assert "cannot be reached" in done.stderr and url in done.stderr


def test_a_half_accepted_prompt_is_refused(comfy_server: ComfyServer) -> None:
    """ComfyUI answers 200 and drops the invalid branch; the client must not take that as success."""
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": -7}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    with pytest.raises(PromptRejectedError) as refused:
        ComfyClient(comfy_server.url).queue_prompt(prompt, "test")
    assert refused.value.status == 200
    assert "4" in refused.value.node_errors or "3" in refused.value.node_errors


def test_library_run_of_a_core_workflow_downloads_the_preview(comfy_server: ComfyServer, tmp_path: Path) -> None:
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 32, "batch_size": 1, "color": 255}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    result = run_workflow(ComfyClient(comfy_server.url), prompt, Overrides(sets=(("EmptyImage", "color", 65280),)),
                          tmp_path)
    assert result.server == comfy_server.url and result.prompt_id
    [png] = result.outputs
    with Image.open(png) as image:
        assert image.size == (64, 32)
        assert image.convert("RGB").getpixel((0, 0)) == (0, 255, 0)


def test_parallel_batch_spreads_jobs_over_servers(comfy_server: ComfyServer, tmp_path: Path) -> None:
    """Core nodes only (fast): four (image, audio) pairs, two at a time, over two addresses of the server."""
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "?"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                       "width": 16, "height": 16, "crop": "disabled"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "client/face"}},
        "4": {"class_type": "LoadAudio", "inputs": {"audio": "?"}},
        "5": {"class_type": "SaveAudio", "inputs": {"audio": ["4", 0], "filename_prefix": "client/voice"}},
    }
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for number in range(4):
        Image.new("RGB", (40, 30), (number * 60, 0, 0)).save(pairs / f"p{number}.png")
        speak(pairs / f"p{number}.wav", f"number {number}")
    urls = [f"http://127.0.0.1:{comfy_server.port}", f"http://localhost:{comfy_server.port}"]
    chosen: list[str] = []
    runner = BatchRunner([ComfyClient(url) for url in urls], workflow, Overrides(), tmp_path / "out", parallel=2,
                         on_event=lambda kind, info: chosen.append(info["server"]) if kind == "chosen" else None)
    outcome = runner.run(jobs_from_folder(pairs))
    assert outcome.done == ["p0", "p1", "p2", "p3"] and not outcome.failed, outcome.failed
    assert set(chosen) == set(urls)
    for number in range(4):
        folder = tmp_path / "out" / f"p{number}"
        [png] = folder.glob("face_*.png")
        with Image.open(png) as image:
            assert image.size == (16, 16) and image.getpixel((8, 8))[0] == number * 60
        assert len(list(folder.glob("voice_*"))) == 1
