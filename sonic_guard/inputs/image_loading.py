"""Portrait files from disk, opened with Pillow, refused with errors that say what is wrong and how to fix it.

ComfyUI's own Load Image fails on an empty or damaged file with Pillow's bare message; the pack's loader node reads
through here instead, so those files get the same kind of answer as every other bad input.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import BadImageError
from .image_convert import to_rgb_uint8

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
_FORMATS = "a PNG, JPEG or WebP photo (BMP, TIFF and GIF are read too)"


def load_image_file(path: Path) -> tuple[np.ndarray, list[str]]:
    """Decode an image file to RGB uint8 (H, W, 3); notes say what was changed (alpha, bit depth, frames...)."""
    path = Path(path)
    if not path.is_file():
        raise BadImageError(problem=f"The image file {path.name} does not exist", expected=_FORMATS,
                            fix="upload the photo with the node's upload button, or pick another file")
    if path.stat().st_size == 0:
        raise BadImageError(problem=f"The image file {path.name} is empty (0 bytes)", expected=_FORMATS,
                            fix="upload the photo again: the copy was probably interrupted")
    try:
        with Image.open(path) as image:
            image.load()  # decode everything now: a truncated file fails here, not halfway through a run
            notes = []
            if getattr(image, "n_frames", 1) > 1:
                notes.append(f"{path.name} has {image.n_frames} frames; the first one is used.")
            array, converted = to_rgb_uint8(image)
    except Image.DecompressionBombError as error:
        raise BadImageError(
            problem=f"The image {path.name} is too large to open safely ({error})",
            expected=f"at most {Image.MAX_IMAGE_PIXELS:,} pixels; a portrait needs far fewer",
            fix="scale the photo down (2048 px on the long side is plenty) and upload it again",
        ) from error
    except UnidentifiedImageError as error:
        raise BadImageError(
            problem=f"The file {path.name} is not an image Pillow can read (its contents match no image format)",
            expected=_FORMATS, fix="export the photo again as PNG or JPEG, or check that the right file was uploaded",
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(
            problem=f"The image {path.name} is damaged and cannot be decoded ({type(error).__name__}: {error})",
            expected=f"a complete {_FORMATS}",
            fix="upload the photo again, or re-save it from an image editor",
        ) from error
    for note in (*notes, *converted):
        logger.info("%s", note)
    return array, [*notes, *converted]
