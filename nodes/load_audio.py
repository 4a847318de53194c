"""Load Audio (Sonic): any file FFmpeg's libraries read (through PyAV), from ComfyUI's input folder, as AUDIO."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ..sonic_guard.inputs.audio_loading import AUDIO_NOTES_KEY, load_audio_file
from . import ids
from .comfy_bridge import input_file, input_files, validate_input_file

AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".m4a", ".ogg", ".opus", ".aac", ".webm", ".mp4")


class LoadAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=ids.LOAD_AUDIO,
            display_name="Load Audio (Sonic)",
            category=ids.CATEGORY,
            description=(
                "Loads speech from ComfyUI's input folder through PyAV (wav, mp3, flac, m4a, ogg, ...). Refuses "
                "paths outside the input folder. Gives the audio at its own rate and channels, plus its length."
            ),
            inputs=[
                io.Combo.Input(
                    "audio_file", options=input_files(AUDIO_EXTENSIONS), upload=io.UploadType.audio,
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
        return validate_input_file(audio_file)

    @classmethod
    def execute(cls, audio_file: str) -> io.NodeOutput:
        loaded = load_audio_file(input_file(audio_file))
        waveform = torch.from_numpy(loaded.original_waveform).float().unsqueeze(0)
        audio = {"waveform": waveform, "sample_rate": loaded.original_sample_rate, AUDIO_NOTES_KEY: list(loaded.notes)}
        return io.NodeOutput(audio, float(loaded.duration_s))
