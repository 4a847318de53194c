"""Load Portrait (Sonic): an image from ComfyUI's input folder only, refused with an actionable error when the file
is empty, damaged or not an image (ComfyUI's Load Image shows Pillow's bare message for those)."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ..sonic_guard.inputs.image_loading import IMAGE_EXTENSIONS, load_image_file
from . import ids
from .comfy_bridge import input_file, input_files, validate_input_file


class LoadPortrait(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=ids.LOAD_IMAGE,
            display_name="Load Portrait (Sonic)",
            category=ids.CATEGORY,
            description=(
                "Loads a portrait photo from ComfyUI's input folder (PNG, JPEG, WebP, ...), applying its EXIF "
                "orientation and putting transparency on white. Refuses paths outside the input folder, and empty, "
                "damaged or non-image files with a message that says how to fix them."
            ),
            inputs=[
                io.Combo.Input("image", options=input_files(IMAGE_EXTENSIONS), upload=io.UploadType.image,
                               tooltip="A photo in ComfyUI's input folder (upload one with the button)."),
            ],
            outputs=[
                io.Image.Output("portrait", display_name="image",
                                tooltip="The photo as a ComfyUI IMAGE (RGB, its own size)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, image: str) -> bool | str:
        return validate_input_file(image)

    @classmethod
    def fingerprint_inputs(cls, image: str) -> str:
        """Re-run when the file changes on disk, not only when another name is picked."""
        try:
            stat = input_file(image).stat()
        except Exception:  # noqa: BLE001 - validation reports the problem
            return image
        return f"{image}:{stat.st_size}:{stat.st_mtime_ns}"

    @classmethod
    def execute(cls, image: str) -> io.NodeOutput:
        array, _ = load_image_file(input_file(image))
        return io.NodeOutput(torch.from_numpy(array).float().div_(255.0).unsqueeze(0))
