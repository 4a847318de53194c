"""Through a real ComfyUI server: awkward but usable inputs (several faces, RGBA, grayscale, CMYK, an 8K photo,
8 kHz and 192 kHz 6-channel audio, unicode and very long file names) run to a video instead of failing."""

from __future__ import annotations

import json

import pytest
from comfy_host import ComfyServer
from hardening_cases import CASES, Case, quick_prompt
from hardening_server import evaluate, run_prompt

ACCEPTED = [case for case in CASES if case.accepted]


def _report(history: dict) -> dict:
    texts = [t for output in history["outputs"].values() for t in output.get("text", []) if t.startswith("{")]
    return json.loads(texts[0])


@pytest.mark.parametrize("case", ACCEPTED, ids=[case.name for case in ACCEPTED])
def test_usable_input_runs_to_a_video(comfy_server: ComfyServer, case: Case) -> None:
    outcome = evaluate(comfy_server, case)
    assert outcome.stage == "success" and outcome.handled, outcome


def test_several_faces_are_reported(comfy_server: ComfyServer) -> None:
    case = next(c for c in ACCEPTED if c.name == "several_faces")
    _, answer, history = run_prompt(comfy_server, case.build(comfy_server.base))
    assert history is not None, answer
    notes = " ".join(_report(history)["notes"])
    assert "faces; animating the largest" in notes, notes


def test_cut_short_wav_is_reported(comfy_server: ComfyServer) -> None:
    # Load Audio (Sonic) -> AUDIO -> generator: the note about the missing half reaches the run's report.
    speech = (comfy_server.base / "input" / "speech.wav").read_bytes()
    data_body = speech.index(b"data") + 8
    cut = comfy_server.base / "input" / "hard_cut_short.wav"
    cut.write_bytes(speech[: data_body + (len(speech) - data_body) // 4 * 2])
    _, answer, history = run_prompt(comfy_server, quick_prompt(audio=cut.name))
    assert history is not None, answer
    notes = " ".join(_report(history)["notes"])
    assert "hard_cut_short.wav is cut short" in notes and "promises" in notes, notes
