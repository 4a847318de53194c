"""Sonic Guard's pure core: the Sonic engine, the memory model and the telemetry logic.

Nothing in this package imports ComfyUI (`comfy`, `folder_paths`, `server`); the ComfyUI glue lives in `nodes/`.
The data path reads top-down: audio_input -> face / image_prep -> features -> sampler (denoiser) -> decode ->
interpolate -> video_writer, orchestrated by `pipeline`.
"""

__version__ = "0.1.0"
