"""Through a real ComfyUI server: whisper-tiny kept only in an audio encoders folder (an extra_model_paths.yaml
entry, as users add one) is found and a generation runs; with whisper-tiny nowhere the loader's error names every
place it looked (beside the Sonic files, both audio_encoders folders, the Hugging Face cache) and the download."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from comfy_host import ComfyServer, execution_error
from conftest import ALL_NODE_IDS, server_base_dir
from hardening_cases import quick_prompt
from hardening_server import run_prompt, server_alive
from test_server_generation import video_outputs


@pytest.fixture(scope="module")
def whisper_elsewhere(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path, speech_wav: Path,
                      portrait_png: Path) -> Iterator[tuple[ComfyServer, Path]]:
    """A server whose model folder has no whisper-tiny: it lives in <extra>/audio_encoders/whisper-tiny."""
    top = tmp_path_factory.mktemp("whisper-elsewhere")
    base = server_base_dir(top / "comfy", tiny_models, speech_wav, portrait_png)
    extra = top / "extra"
    shutil.move(base / "models" / "sonic" / "tiny-sonic" / "whisper-tiny", extra / "audio_encoders" / "whisper-tiny")
    config = top / "extra_model_paths.yaml"
    config.write_text(f"sonic_guard_test:\n  base_path: {extra}\n  audio_encoders: audio_encoders\n")
    server = ComfyServer.start(base, extra_args=["--cache-none", "--extra-model-paths-config", str(config)],
                               required_nodes=ALL_NODE_IDS, env={"HF_HUB_CACHE": str(top / "empty-hub")})
    try:
        yield server, top
    finally:
        server.stop()


def test_whisper_in_audio_encoders_runs_then_nowhere_names_every_place(
        whisper_elsewhere: tuple[ComfyServer, Path]) -> None:
    server, top = whisper_elsewhere
    whisper = top / "extra" / "audio_encoders" / "whisper-tiny"
    _, answer, history = run_prompt(server, quick_prompt())
    assert history is not None and execution_error(history) is None, (answer, history, server.log_tail())
    assert history["status"]["status_str"] == "success"
    videos = video_outputs(server, history)
    assert len(videos) == 1 and videos[0].stat().st_size > 0, history
    assert f"whisper-tiny from {whisper}" in server.log_text()

    hidden = whisper.with_name("moved-away")
    whisper.rename(hidden)
    try:
        _, answer, history = run_prompt(server, quick_prompt())
        assert history is not None, answer
        error = execution_error(history)
        assert error is not None and error["exception_type"].endswith("CheckpointError"), error
        message = error["exception_message"]
        root = server.base / "models" / "sonic" / "tiny-sonic"
        for place in (root / "whisper-tiny", server.base / "models" / "audio_encoders" / "whisper-tiny", whisper,
                      top / "empty-hub" / "models--openai--whisper-tiny"):
            assert str(place) in message, (place, message)
        assert "hf download openai/whisper-tiny --local-dir" in message and "Fix:" in message, message
        assert "huggingface-cli" not in message, message
        assert server_alive(server)
    finally:
        hidden.rename(whisper)
