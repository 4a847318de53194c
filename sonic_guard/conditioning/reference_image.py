"""Reference image preparation: normalise, find the face, optional crop, resize, tensors (spec 4.2-4.3)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from PIL import Image

from ..errors import BadInputError
from ..face.boxes import FaceBox, FaceDetector
from ..face.crop import CropBox, crop_box, face_mask
from ..face.detection import check_detectable_image, find_main_face
from ..face.opencv_detector import work_scale
from ..inputs.image_convert import ImageInput, to_rgb_uint8

logger = logging.getLogger(__name__)

MIN_RESOLUTION_RANGE = (128, 2048)  # 128 only makes sense for small test models; 512 is the reference
SIDE_MULTIPLE = 64
CLIP_SIZE = 224
# Detection runs on a copy whose long side is at most this, so 8K photos cost no more than 2K ones; the short
# side is not cut below DETECT_MIN_SHORT_SIDE, so banners keep their face size (16:9 and squarer: long side rule).
DETECT_LONG_SIDE = 2048
DETECT_MIN_SHORT_SIDE = 1152
UPSCALE_WARNING = 2.0


@dataclass
class PreparedReference:
    """Tensors for the pipeline plus what was found and done, for reporting."""

    reference: torch.Tensor  # (3, H, W) float32 in [-1, 1]
    face_mask: torch.Tensor  # (1, 1, H, W) float32 in [0, 1], LANCZOS-resized, not re-binarised
    clip_pixels: torch.Tensor  # (1, 3, 224, 224) float32, CLIPImageProcessor defaults
    image: np.ndarray  # (H, W, 3) uint8, the resized reference
    face_box: FaceBox  # in the original (uncropped, unresized) image
    crop_box: CropBox | None  # in the original image; None when crop is off
    faces_found: int
    detector_name: str
    warnings: list[str] = field(default_factory=list)
    # (x1, y1, x2, y2) ints of the face in the prepared reference's pixels (the lip-sync meter reads it).
    face_box_resized: CropBox | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the prepared reference."""
        return int(self.image.shape[1]), int(self.image.shape[0])


def check_min_resolution(min_resolution: int) -> None:
    low, high = MIN_RESOLUTION_RANGE
    if not isinstance(min_resolution, int) or min_resolution % SIDE_MULTIPLE or not low <= min_resolution <= high:
        raise BadInputError(
            problem=f"min_resolution {min_resolution!r} is not usable",
            expected=f"a multiple of {SIDE_MULTIPLE} between {low} and {high} (512 is the reference value)",
            fix="set min_resolution to 512 (or 576, 640, 768 ... for larger videos)",
        )


def resized_size(width: int, height: int, min_resolution: int) -> tuple[int, int]:
    """(new_w, new_h): the short side scaled to min_resolution, both sides rounded to multiples of 64."""
    scale = min_resolution / min(width, height)
    new_w = max(SIDE_MULTIPLE, int(round(width * scale / SIDE_MULTIPLE)) * SIDE_MULTIPLE)
    new_h = max(SIDE_MULTIPLE, int(round(height * scale / SIDE_MULTIPLE)) * SIDE_MULTIPLE)
    return new_w, new_h


def detect_main_face(image_rgb: np.ndarray, detector: FaceDetector) -> tuple[FaceBox, int, list[str]]:
    """Largest face, on a downscaled copy for huge images; boxes come back in full-image pixels."""
    check_detectable_image(image_rgb)
    height, width = image_rgb.shape[:2]
    scale = work_scale(width, height, DETECT_LONG_SIDE, DETECT_MIN_SHORT_SIDE)
    small = image_rgb
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)
    face, faces, warnings = find_main_face(small, detector)
    back_x, back_y = width / small.shape[1], height / small.shape[0]
    return face.scaled(back_x, back_y), len(faces), warnings


def prepare_reference(
    image: ImageInput,
    *,
    min_resolution: int = 512,
    expand_ratio: float = 0.5,
    crop: bool = False,
    detector: FaceDetector,
) -> PreparedReference:
    """Everything the pipeline needs from the portrait: reference, face mask and CLIP pixels."""
    check_min_resolution(min_resolution)
    pixels, warnings = to_rgb_uint8(image)
    face, faces_found, face_warnings = detect_main_face(pixels, detector)
    warnings += face_warnings
    original_face = face
    box: CropBox | None = None
    if crop:
        box = crop_box(face, (pixels.shape[1], pixels.shape[0]), expand_ratio)
        x1, y1, x2, y2 = box
        pixels = pixels[y1:y2, x1:x2]
        face = _face_in_crop(pixels, face, box, detector, warnings)
    height, width = pixels.shape[:2]
    new_w, new_h = resized_size(width, height, min_resolution)
    if new_w / width > UPSCALE_WARNING:
        warnings.append(
            f"The {'cropped ' if crop else ''}image is {width}x{height}; it is enlarged to {new_w}x{new_h}, "
            "so the video may look soft. A larger photo (or a smaller expand ratio) gives sharper results."
        )
    resized = np.asarray(Image.fromarray(pixels).resize((new_w, new_h), Image.LANCZOS))
    mask = Image.fromarray(face_mask(face, (width, height))).resize((new_w, new_h), Image.LANCZOS)
    reference = torch.from_numpy(resized.copy()).permute(2, 0, 1).float().div(255.0).sub(0.5).div(0.5)
    mask_tensor = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
    for warning in warnings:
        logger.info("Reference image: %s", warning)
    return PreparedReference(
        reference=reference.contiguous(),
        face_mask=mask_tensor.contiguous(),
        clip_pixels=clip_pixels(resized),
        image=resized,
        face_box=original_face,
        crop_box=box,
        faces_found=faces_found,
        detector_name=str(getattr(detector, "name", type(detector).__name__)),
        warnings=warnings,
        face_box_resized=_box_in_resized(face, new_w / width, new_h / height, new_w, new_h),
    )


def _box_in_resized(face: FaceBox, scale_x: float, scale_y: float, width: int, height: int) -> CropBox:
    scaled = face.scaled(scale_x, scale_y).clipped(width, height)
    return (int(scaled.x1), int(scaled.y1), int(round(scaled.x2)), int(round(scaled.y2)))


def _face_in_crop(
    cropped: np.ndarray, face: FaceBox, box: CropBox, detector: FaceDetector, warnings: list[str]
) -> FaceBox:
    """Detect again on the crop, as the reference does; fall back to the shifted original box."""
    x1, y1 = box[0], box[1]
    shifted = FaceBox(face.x1 - x1, face.y1 - y1, face.x2 - x1, face.y2 - y1, face.score)
    shifted = shifted.clipped(cropped.shape[1], cropped.shape[0])
    try:
        found, _, _ = detect_main_face(cropped, detector)
    except BadInputError:
        warnings.append("The face was not found again in the cropped image; using the box from the full photo.")
        return shifted
    return found


def clip_pixels(resized_rgb: np.ndarray) -> torch.Tensor:
    """(1, 3, 224, 224): PIL LANCZOS to 224x224, then CLIPImageProcessor with its default settings."""
    from transformers import CLIPImageProcessor

    small = Image.fromarray(resized_rgb).resize((CLIP_SIZE, CLIP_SIZE), Image.LANCZOS)
    processed = CLIPImageProcessor()(images=small, return_tensors="pt")
    return processed["pixel_values"].float()
