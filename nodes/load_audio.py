"""Load Audio (Sonic): any file ffmpeg reads, from ComfyUI's input folder only, as ComfyUI AUDIO."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..sonic_guard.audio_input import load_audio_file
from ..sonic_guard.paths import resolve_user_path
from . import ids
from .comfy_bridge import input_directory

AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".m4a", ".ogg", ".opus", ".aac", ".webm", ".mp4")


def _audio_files() -> list[str]:
    root = input_directory()
    if not root.is_dir():
        return []
    names = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return sorted(name for name in names if name.lower().endswith(AUDIO_EXTENSIONS))


class LoadAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=ids.LOAD_AUDIO,
            display_name="Load Audio (Sonic)",
            category=ids.CATEGORY,
            description=(
                "Loads speech from ComfyUI's input folder through ffmpeg (wav, mp3, flac, m4a, ogg, ...). Refuses "
                "paths outside the input folder. Gives the audio at its own rate and channels, plus its length."
            ),
            inputs=[
                io.Combo.Input(
                    "audio_file", options=_audio_files(), upload=io.UploadType.audio,
                    tooltip="An audio file in ComfyUI's input folder (upload one with the button).",
                ),
            ],
            outputs=[
                io.Audio.Output("audio", display_name="audio",
                                tooltip="The audio as ComfyUI AUDIO (original rate, mono or stereo)."),
                io.Float.Output("duration_s", display_name="duration_s", tooltip="Length of the audio in seconds."),
            ],
        )

    @classmethod
    def validate_inputs(cls, audio_file: str) -> bool | str:
        try:
            resolve_user_path(audio_file, input_directory())
        except Exception as error:  # noqa: BLE001 - ComfyUI shows this string as the validation error
            return str(error)
        return True

    @classmethod
    def execute(cls, audio_file: str) -> io.NodeOutput:
        loaded = load_audio_file(resolve_user_path(audio_file, input_directory()))
        waveform = torch.from_numpy(loaded.original_waveform).float().unsqueeze(0)
        return io.NodeOutput(
            {"waveform": waveform, "sample_rate": loaded.original_sample_rate}, float(loaded.duration_s)
        )
