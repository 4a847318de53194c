"""Through a real ComfyUI 0.3.75 server: the example workflow on the small model, real photo, real speech."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from comfy_host import REPO, ComfyServer, execution_error

WORKFLOWS = REPO / "workflows"


def basic_prompt(**generator_inputs: object) -> dict:
    prompt = json.loads((WORKFLOWS / "sonic_basic_api.json").read_text())
    prompt["1"]["inputs"]["model_folder"] = "tiny-sonic"
    prompt["4"]["inputs"].update({"min_resolution": 128, "inference_steps": 2, **generator_inputs})
    return prompt


def ffprobe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


def video_outputs(server: ComfyServer, history: dict) -> list[Path]:
    return [
        server.base / item.get("type", "output") / item.get("subfolder", "") / item["filename"]
        for output in history["outputs"].values() for item in output.get("images", [])
        if str(item.get("filename", "")).endswith(".mp4")
    ]


def test_basic_workflow_makes_a_video_with_audio(comfy_server: ComfyServer) -> None:
    history = comfy_server.run(basic_prompt())
    assert execution_error(history) is None, execution_error(history)
    assert history["status"]["status_str"] == "success"
    videos = video_outputs(comfy_server, history)
    assert len(videos) == 1 and videos[0].exists()
    probe = ffprobe(videos[0])
    kinds = sorted(stream["codec_type"] for stream in probe["streams"])
    assert kinds == ["audio", "video"]
    video = next(s for s in probe["streams"] if s["codec_type"] == "video")
    audio = next(s for s in probe["streams"] if s["codec_type"] == "audio")
    assert audio["codec_name"] == "aac"
    frame = 1 / 25  # rife is absent from nothing: the small model ships RIFE weights, so 25 fps
    assert abs(float(video["duration"]) - float(audio["duration"])) <= frame + 1e-3
    speech = ffprobe(comfy_server.base / "input" / "speech.wav")
    assert abs(float(video["duration"]) - float(speech["format"]["duration"])) <= frame + 1e-3
    report = json.loads(next(
        text for output in history["outputs"].values() for text in output.get("text", []) if text.startswith("{")
    ))
    assert report["outcome"] == "success"
    assert report["predicted_peak_bytes"] > 0


@pytest.mark.parametrize("bad_file", ["../../etc/passwd", "/etc/passwd", "missing.wav"])
def test_audio_paths_outside_input_are_refused(comfy_server: ComfyServer, bad_file: str) -> None:
    prompt = basic_prompt()
    prompt["3"]["inputs"]["audio_file"] = bad_file
    status, answer = comfy_server.post_json("/prompt", {"prompt": prompt, "client_id": comfy_server.client_id})
    assert status == 400 or answer.get("node_errors"), answer


def test_gpu_readout_without_gpu_is_truthful(comfy_server: ComfyServer) -> None:
    prompt = {"1": {"class_type": "SonicGuardGpuMemoryReadout", "inputs": {}}}
    history = comfy_server.run(prompt)
    assert execution_error(history) is None, execution_error(history)
    table = history["outputs"]["1"]["text"][0]
    assert "no NVIDIA" in table or "NVML" in table
    assert "host" in table.lower()


def test_metrics_and_health_answer(comfy_server: ComfyServer) -> None:
    with comfy_server.request("/sonic/metrics") as response:
        body = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/plain")
    assert "sonic_runs_total" in body
    health = comfy_server.get_json("/sonic/health")
    assert health["status"] in ("ok", "degraded")
    assert "queue_length" in health


def test_extra_model_paths_yaml_is_honoured(tmp_path: Path, tiny_models: Path) -> None:
    """A `sonic:` entry of extra_model_paths.yaml adds a search folder; the loader lists what it holds."""
    import shutil

    elsewhere = tmp_path / "shared-models" / "sonic-weights"
    shutil.copytree(tiny_models, elsewhere / "elsewhere-sonic")
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(f"team:\n  base_path: {tmp_path / 'shared-models'}\n  sonic: sonic-weights\n")
    server = ComfyServer.start(
        tmp_path / "base", extra_args=["--extra-model-paths-config", str(config)],
        required_nodes=["SonicGuardModelLoader"],
    )
    try:
        info = server.get_json("/object_info/SonicGuardModelLoader")["SonicGuardModelLoader"]
        options = info["input"]["required"]["model_folder"]
        names = options[0] if isinstance(options[0], list) else options[1].get("options", [])
        assert "elsewhere-sonic" in names, options
    finally:
        server.stop()
