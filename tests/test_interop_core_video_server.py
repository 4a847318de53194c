"""Through a real ComfyUI server, with ComfyUI's own nodes on both sides of the generator: core Load Image and
Load Audio feed it; its VIDEO goes into core Save Video and Get Video Components (→ Create Video → Save Video);
its frames, audio and fps go into core Create Video → Save Video. Every file is checked with PyAV: playable, with
a video and an audio stream of the run's length."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from comfy_host import ComfyServer, execution_error
from hardening_cases import quick_prompt
from hardening_server import run_prompt

SECONDS = 1.0


def _prompt() -> dict:
    prompt = quick_prompt(duration=SECONDS, output_frames=True, filename_prefix="interop/generator")
    del prompt["2"], prompt["3"]  # our loaders: core ones instead
    prompt.update({
        "10": {"class_type": "LoadImage", "inputs": {"image": "portrait.png"}},
        "11": {"class_type": "LoadAudio", "inputs": {"audio": "speech.wav"}},
        "20": {"class_type": "SaveVideo", "inputs": {"video": ["4", 0], "filename_prefix": "interop/saved",
                                                     "format": "auto", "codec": "auto"}},
        "21": {"class_type": "GetVideoComponents", "inputs": {"video": ["4", 0]}},
        "22": {"class_type": "CreateVideo", "inputs": {"images": ["21", 0], "fps": ["21", 2], "audio": ["21", 1]}},
        "23": {"class_type": "SaveVideo", "inputs": {"video": ["22", 0], "filename_prefix": "interop/components",
                                                     "format": "auto", "codec": "auto"}},
        "24": {"class_type": "CreateVideo", "inputs": {"images": ["4", 1], "fps": ["4", 3], "audio": ["4", 2]}},
        "25": {"class_type": "SaveVideo", "inputs": {"video": ["24", 0], "filename_prefix": "interop/frames",
                                                     "format": "auto", "codec": "auto"}},
    })
    prompt["4"]["inputs"].update({"image": ["10", 0], "audio": ["11", 0]})
    return prompt


def _streams(path: Path) -> tuple[int, float, float]:
    """(decoded video frames, video seconds, audio seconds) of a file, by decoding it."""
    with av.open(str(path)) as container:
        assert container.streams.video and container.streams.audio, f"{path.name}: streams {container.streams}"
        frames = sum(1 for _ in container.decode(video=0))
        rate = float(container.streams.video[0].average_rate)
    with av.open(str(path)) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
        audio_rate = container.streams.audio[0].rate
    return frames, frames / rate, samples / audio_rate


@pytest.fixture(scope="module")
def saved(comfy_server: ComfyServer) -> dict[str, Path]:
    _, answer, history = run_prompt(comfy_server, _prompt())
    assert history is not None, answer
    assert execution_error(history) is None, execution_error(history)
    folder = comfy_server.base / "output" / "interop"
    files = {}
    for prefix in ("generator", "saved", "components", "frames"):
        found = sorted(folder.glob(f"{prefix}_*.mp4"))
        assert found, f"no {prefix} video in {sorted(p.name for p in folder.iterdir())}"
        files[prefix] = found[-1]
    return files


@pytest.mark.parametrize("prefix", ["generator", "saved", "components", "frames"])
def test_core_video_nodes_take_our_outputs(saved: dict[str, Path], prefix: str) -> None:
    frames, video_s, audio_s = _streams(saved[prefix])
    reference_frames, reference_s, _ = _streams(saved["generator"])
    assert frames == reference_frames > 0
    assert abs(video_s - SECONDS) <= 0.1 and abs(video_s - reference_s) < 1e-6
    assert abs(audio_s - SECONDS) <= 0.1, audio_s
