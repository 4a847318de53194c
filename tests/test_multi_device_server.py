"""Through a real ComfyUI server: the generator's `devices` setting and its queue-time checks.

`devices="cpu,cpu"` starts two worker processes from inside the running server (spawned, so they must import
the pack's core by name, not through ComfyUI's main script) and the video equals the one-process video frame for
frame. Settings that cannot run are refused when queued, and a NaN never reaches /history.
"""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from comfy_host import ComfyServer, execution_error
from hardening_cases import quick_prompt
from hardening_server import is_actionable, queue_message, run_prompt
from test_server_generation import video_outputs

# 3 s at 12.5 fps is 38 frames: two overlapping windows, so both ranks denoise one.
TWO_WINDOWS = {"duration": 3.0, "inference_steps": 2, "filename_prefix": "multi_device/run"}


def _frames(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _video_of(server: ComfyServer, **inputs: object) -> tuple[np.ndarray, dict]:
    history = server.run(quick_prompt(**TWO_WINDOWS, **inputs), timeout_s=600)
    assert execution_error(history) is None, execution_error(history)
    (video,) = video_outputs(server, history)
    report = json.loads(next(text for output in history["outputs"].values() for text in output.get("text", [])
                             if text.startswith("{")))
    return _frames(video), report


def test_two_cpu_workers_inside_the_server_make_the_same_video(comfy_server: ComfyServer) -> None:
    single, _ = _video_of(comfy_server)
    split, report = _video_of(comfy_server, devices="cpu,cpu")
    assert report["sampling_devices"] == ["cpu", "cpu"]
    assert split.shape == single.shape and split.shape[0] >= 30
    assert np.array_equal(split, single), f"max difference {np.abs(split.astype(int) - single).max()}"


@pytest.mark.parametrize(("devices", "words"), [
    ("cpu", "lists one device"),
    ("cuda:0,gpu1", "is not a device name"),
    ("cuda:6,cuda:7", "CUDA GPU"),
])
def test_devices_that_cannot_run_are_refused_when_queued(comfy_server: ComfyServer, devices: str,
                                                         words: str) -> None:
    status, answer, history = run_prompt(comfy_server, quick_prompt(devices=devices))
    assert history is None, "the prompt was accepted"
    message = queue_message(answer)
    assert words in message and is_actionable(message), message


@pytest.mark.parametrize(("name", "value", "words"), [
    ("expand_ratio", float("nan"), "expand_ratio is nan"),
    ("motion_scale", float("-inf"), "motion_scale is -inf"),
    ("duration", -5.0, "out of range"),  # the validator takes over ComfyUI's min/max for the floats it names
    ("smooth_motion", 1.5, "out of range"),
])
def test_non_finite_and_out_of_range_floats_never_reach_the_history(comfy_server: ComfyServer, name: str,
                                                                     value: float, words: str) -> None:
    status, answer, history = run_prompt(comfy_server, quick_prompt(**{name: value}))
    assert history is None and status == 400, answer
    message = queue_message(answer)
    assert words in message and is_actionable(message), message

    def refuse(constant: str) -> None:
        raise AssertionError(f"/history holds a bare {constant}: the editor's JSON parser fails on it")

    raw = comfy_server.request("/history").read().decode()
    json.loads(raw, parse_constant=refuse)
