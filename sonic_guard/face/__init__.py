"""Face: find the face to animate and frame its crop.

In: an RGB uint8 image. Out: the largest `FaceBox`, the square crop box around it and the face mask. `boxes` holds
the box type and the detector protocol and imports no detector; `detection` checks the image and picks the face;
`choose_detector` picks YOLOv5-face (when its file is present) or OpenCV; `crop` is the crop and mask geometry.
This module is the one import point for all of it.
"""

from __future__ import annotations

from .boxes import FaceBox, FaceDetector
from .choose_detector import make_face_detector
from .crop import CropBox, crop_box, face_mask, face_mask_box, recommend_expand_ratio
from .detection import detect_faces, find_main_face, select_largest_face
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
