"""Any image input (PIL, numpy, ComfyUI IMAGE tensor) -> RGB uint8 (H, W, 3), saying what was changed."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import BadImageError

# Float images are converted in bands of rows so an 8K float frame never gets a second full-size float copy.
_ROW_BAND = 512
ImageInput = np.ndarray | Image.Image | torch.Tensor
_EXIF_ORIENTATION = 0x0112
_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb_uint8(image: ImageInput) -> tuple[np.ndarray, list[str]]:
    """Normalise an image to RGB uint8; notes say what was done (alpha on white, batch, bit depth...)."""
    notes: list[str] = []
    if isinstance(image, Image.Image):
        return _from_pil(image, notes), notes
    if hasattr(image, "detach"):  # a torch tensor, e.g. ComfyUI IMAGE [B, H, W, C] in [0, 1]
        image = image.detach().to("cpu")
        if not image.dtype.is_floating_point and image.dtype.itemsize == 1:
            image = image.numpy()
        else:
            image = image.float().numpy()
    if not isinstance(image, np.ndarray):
        raise BadImageError(
            problem=f"The image input is a {type(image).__name__}",
            expected="a ComfyUI IMAGE, a PIL image or a numpy array",
            fix="connect a Load Image node output",
        )
    return _from_array(image, notes), notes


def _from_pil(image: Image.Image, notes: list[str]) -> np.ndarray:
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
        notes.append("Turned the image upright using its EXIF orientation.")
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in _TRANSPARENT_MODES:
        rgba = np.asarray(image.convert("RGBA"))
        return _composite_on_white(rgba[..., :3], rgba[..., 3:4].astype(np.float32) / 255.0, notes)
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        notes.append(f"Converted the {mode} (high bit depth grayscale) image to 8-bit RGB.")
        return _from_array(np.asarray(image), [])
    if mode == "CMYK":
        notes.append("Converted the CMYK image to RGB (colours may shift slightly).")
    elif mode in ("L", "1"):
        notes.append("The image is grayscale; it was converted to RGB (the video will be grayscale too).")
    return np.ascontiguousarray(np.asarray(image.convert("RGB")), dtype=np.uint8)


def _from_array(array: np.ndarray, notes: list[str]) -> np.ndarray:
    if array.ndim == 4:
        if array.shape[0] == 0:
            raise _shape_error(array)
        if array.shape[0] > 1:
            notes.append(f"The image input holds a batch of {array.shape[0]} images; only the first is used.")
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first (C, H, W)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or 0 in array.shape:
        raise _shape_error(array)
    pixels = _to_uint8(array, notes)
    channels = pixels.shape[2]
    if channels in (2, 4):
        alpha = pixels[..., -1:].astype(np.float32) / 255.0
        colour = pixels[..., :-1]
        if channels == 2:
            colour = np.repeat(colour, 3, axis=2)
        return _composite_on_white(colour, alpha, notes)
    if channels == 1:
        notes.append("The image is grayscale; it was converted to RGB (the video will be grayscale too).")
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))
    return np.ascontiguousarray(pixels)


def _to_uint8(array: np.ndarray, notes: list[str]) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    wide = array.dtype == np.uint16 or (np.issubdtype(array.dtype, np.integer) and array.max() > 255)
    if wide:
        # PIL reads 16-bit PNGs as uint16 or int32 ("I" mode): map the full 16-bit range onto 8 bits.
        notes.append("Converted the 16-bit image to 8-bit.")
        return (array.astype(np.float64) / 65535.0 * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array.clip(0, 255).astype(np.uint8)
    if not np.issubdtype(array.dtype, np.floating):
        raise _shape_error(array)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise BadImageError(
            problem=f"The image contains {bad} NaN or infinite pixel values",
            expected="pixel values between 0 and 1",
            fix="check the node that produced the image; re-load the original photo",
        )
    peak = float(array.max())
    scale = 255.0
    if peak > 1.5:
        # Values beyond [0, 1] mean a 0-255 float image, not ComfyUI's [0, 1] convention.
        scale = 1.0
        notes.append("The float image uses a 0-255 range; it was read as such.")
    out = np.empty(array.shape, dtype=np.uint8)
    for start in range(0, array.shape[0], _ROW_BAND):
        band = array[start : start + _ROW_BAND].astype(np.float32) * scale + 0.5
        out[start : start + _ROW_BAND] = np.clip(band, 0, 255).astype(np.uint8)
    return out


def _composite_on_white(colour: np.ndarray, alpha: np.ndarray, notes: list[str]) -> np.ndarray:
    if float(alpha.min()) >= 1.0:
        return np.ascontiguousarray(colour.astype(np.uint8))
    notes.append("The image has transparency; transparent areas were filled with white.")
    blended = colour.astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return (blended + 0.5).clip(0, 255).astype(np.uint8)


def _shape_error(array: np.ndarray) -> BadImageError:
    return BadImageError(
        problem=f"The image has shape {tuple(array.shape)} and dtype {array.dtype}",
        expected="an image shaped (height, width, 3) or a ComfyUI IMAGE batch (batch, height, width, 3)",
        fix="connect a Load Image node output, or convert the image to RGB",
    )
