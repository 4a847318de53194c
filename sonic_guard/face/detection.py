"""Checking an image for detection and choosing the face to animate."""

from __future__ import annotations

import logging

import numpy as np

from ..errors import BadImageError, NoFaceError
from .boxes import FaceBox, FaceDetector

logger = logging.getLogger(__name__)

MIN_IMAGE_SIDE = 64
# A face smaller than this (pixels, short side) carries too little detail to animate well.
MIN_FACE_SIDE = 64


def check_detectable_image(image_rgb: np.ndarray) -> None:
    """Refuse arrays that are not RGB uint8 or are too small to hold a usable face."""
    if not isinstance(image_rgb, np.ndarray) or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        shape = getattr(image_rgb, "shape", None)
        raise BadImageError(
            problem=f"The image has shape {shape}",
            expected="an RGB image shaped (height, width, 3)",
            fix="connect a Load Image node output, or convert the image to RGB",
        )
    if image_rgb.dtype != np.uint8:
        raise BadImageError(
            problem=f"The image has dtype {image_rgb.dtype}",
            expected="uint8 RGB pixels",
            fix="convert it with the image preparation step first",
        )
    height, width = image_rgb.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise BadImageError(
            problem=f"The image is only {width}x{height} pixels",
            expected=f"at least {MIN_IMAGE_SIDE} pixels on the short side; 512 or more works best",
            fix="use a larger portrait photo (the face itself should be at least 128 pixels tall)",
        )


def detect_faces(image_rgb: np.ndarray, detector: FaceDetector) -> list[FaceBox]:
    """All faces the detector finds, as it found them (not clipped), largest first.

    Boxes with less than a pixel inside the image are dropped. The rest keep the detector's float
    coordinates: the reference crop and face mask are computed from the unclipped box, and clipping here
    would move the mask's centre for a face cut by the border.
    """
    check_detectable_image(image_rgb)
    height, width = image_rgb.shape[:2]
    faces = []
    for face in detector(image_rgb):
        visible = face.clipped(width, height)
        if visible.width >= 1 and visible.height >= 1:
            faces.append(face)
    return sorted(faces, key=lambda face: face.area, reverse=True)


def select_largest_face(faces: list[FaceBox]) -> FaceBox:
    """The face with the largest area (the reference code keeps the last face bigger than face 0 instead)."""
    if not faces:
        raise no_face_error("the detector found none")
    best = faces[0]
    for face in faces[1:]:
        if face.area > best.area:
            best = face
    return best


def no_face_error(detail: str, detector_name: str = "") -> NoFaceError:
    by = f" by the {detector_name} detector" if detector_name else ""
    return NoFaceError(
        problem=f"No face was found in the image{by} ({detail})",
        expected=f"a clear, front-facing face at least {MIN_FACE_SIDE} pixels tall, not covered, in reasonable light",
        fix="use a different photo with a frontal face, crop the photo tighter around the face, or, "
        "for cartoon and stylised faces, place yoloface_v5m.pt in the Sonic models folder "
        "so the stronger detector is used",
    )


def find_main_face(image_rgb: np.ndarray, detector: FaceDetector) -> tuple[FaceBox, list[FaceBox], list[str]]:
    """The face to animate, all faces found, and warnings (several faces, a small face)."""
    faces = detect_faces(image_rgb, detector)
    if not faces:
        raise no_face_error("the detector found none", getattr(detector, "name", ""))
    face = select_largest_face(faces)
    warnings: list[str] = []
    if len(faces) > 1:
        warnings.append(
            f"Found {len(faces)} faces; animating the largest ({face.width:.0f}x{face.height:.0f} px at "
            f"x={face.x1:.0f}, y={face.y1:.0f}). Crop the photo to one face to choose another."
        )
    if min(face.width, face.height) < MIN_FACE_SIDE:
        warnings.append(
            f"The face is only {face.width:.0f}x{face.height:.0f} px; a face of {MIN_FACE_SIDE} px or more "
            "gives a sharper result (turn on crop or use a closer photo)."
        )
    for warning in warnings:
        logger.warning(warning)
    return face, faces, warnings


