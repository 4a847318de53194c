"""Face detection and crop geometry: one import point for the split modules."""

from __future__ import annotations

from .crop import CropBox, crop_box, face_mask, face_mask_box, recommend_expand_ratio
from .detection import FaceBox, FaceDetector, detect_faces, find_main_face, make_face_detector, select_largest_face
from .opencv_detector import OpenCvFaceDetector
from .yolo_detector import YoloFaceDetector

__all__ = (
    "CropBox",
    "FaceBox",
    "FaceDetector",
    "OpenCvFaceDetector",
    "YoloFaceDetector",
    "crop_box",
    "detect_faces",
    "face_mask",
    "face_mask_box",
    "find_main_face",
    "make_face_detector",
    "recommend_expand_ratio",
    "select_largest_face",
)
