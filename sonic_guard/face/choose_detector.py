"""Which face detector a run uses: YOLOv5-face when its file is present, else OpenCV's."""

from __future__ import annotations

import logging
from pathlib import Path

from .boxes import FaceDetector

logger = logging.getLogger(__name__)


def make_face_detector(yolo_path: Path | None) -> FaceDetector:
    """YOLOv5-face (the reference detector) when its TorchScript file is given and present, else OpenCV."""
    if yolo_path is not None:
        path = Path(yolo_path)
        if path.is_file():
            from .yolo_detector import YoloFaceDetector

            return YoloFaceDetector(path)
        logger.info("Face detector %s not found; using the OpenCV cascade detector instead.", path.name)
    from .opencv_detector import OpenCvFaceDetector

    return OpenCvFaceDetector()
