"""A face detector that needs no model download: OpenCV's bundled Haar cascades.

OpenCV 5 no longer ships `CascadeClassifier` in the main package; there the LBP frontal-face cascade that
scikit-image bundles (OpenCV's own `lbpcascade_frontalface`) is evaluated by scikit-image instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import CheckpointError
from .boxes import FaceBox

logger = logging.getLogger(__name__)

# Detection runs on a copy whose long side is at most this: cascades cost grows with pixels, and faces
# in an 8K photo stay far above the minimum size after the downscale.
WORK_LONG_SIDE = 800
# ... but the short side is not cut below this (the image's own short side when smaller): a 4000x300 banner
# cut to 800 px long would shrink its face to 60 px. 450 leaves 16:9 and squarer photos as before.
WORK_MIN_SHORT_SIDE = 450
# Smallest face searched for, as a fraction of the short side (with an absolute floor in pixels).
MIN_FACE_FRACTION = 0.06
MIN_FACE_PIXELS = 24

RawDetect = Callable[[np.ndarray, int], list[tuple[int, int, int, int]]]


@dataclass(frozen=True)
class _Pass:
    """One attempt: a cascade, how many overlapping hits it needs, and the score given to what it finds."""

    detect: RawDetect
    min_neighbors: int
    score: float
    mirrored: bool = False


def _haar_passes() -> list[_Pass] | None:
    if not hasattr(cv2, "CascadeClassifier"):
        return None
    folder = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or "")
    names = ("frontalface_default", "frontalface_alt2", "profileface")
    files = [folder / f"haarcascade_{name}.xml" for name in names]
    if not all(file.is_file() for file in files):
        return None
    default, alt2, profile = (cv2.CascadeClassifier(str(file)) for file in files)

    def run(cascade: cv2.CascadeClassifier) -> RawDetect:
        def detect(gray: np.ndarray, min_neighbors: int) -> list[tuple[int, int, int, int]]:
            side = max(MIN_FACE_PIXELS, int(min(gray.shape) * MIN_FACE_FRACTION))
            # Haar features compare sums of regions: equalising the histogram helps dim or flat photos.
            found = cascade.detectMultiScale(
                cv2.equalizeHist(gray), scaleFactor=1.1, minNeighbors=min_neighbors, minSize=(side, side)
            )
            return [tuple(int(v) for v in box) for box in found]

        return detect

    # Strict frontal passes first (no false positives on the test photos at 5 neighbours); looser and
    # profile passes only when nothing was found, as a fallback for turned heads.
    return [
        _Pass(run(default), 5, 1.0),
        _Pass(run(alt2), 3, 0.6),
        _Pass(run(profile), 5, 0.5),
        _Pass(run(profile), 5, 0.5, mirrored=True),
    ]


def _lbp_passes() -> list[_Pass] | None:
    try:
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade
    except ImportError:
        return None
    cascade = Cascade(lbp_frontal_face_cascade_filename())

    def detect(gray: np.ndarray, min_neighbors: int) -> list[tuple[int, int, int, int]]:
        side = max(MIN_FACE_PIXELS, int(min(gray.shape) * MIN_FACE_FRACTION))
        # The LBP cascade reads raw grey levels: histogram equalisation adds false hits on clothing.
        found = cascade.detect_multi_scale(
            img=gray.astype(np.float32) / 255.0,
            scale_factor=1.2,
            step_ratio=1,
            min_size=(side, side),
            max_size=(min(gray.shape), min(gray.shape)),
            min_neighbor_number=min_neighbors,
            intersection_score_threshold=0.5,
        )
        return [(int(d["c"]), int(d["r"]), int(d["width"]), int(d["height"])) for d in found]

    # 8 neighbours rejects the LBP cascade's false hits on clothing; 4 recovers small or dim faces.
    return [_Pass(detect, 8, 1.0), _Pass(detect, 4, 0.6)]


def work_scale(width: int, height: int, long_side: int, min_short_side: int) -> float:
    """Downscale factor (<= 1) that brings the long side to `long_side` unless that cuts the short side below
    `min_short_side`: very wide or tall images are scaled by their short side instead."""
    return min(1.0, max(long_side / max(width, height), min_short_side / min(width, height)))


class OpenCvFaceDetector:
    """Cascade face detector; tries strict settings first and loosens them only when nothing is found."""

    def __init__(self) -> None:
        passes = _haar_passes()
        self.name = "OpenCV Haar cascade"
        if passes is None:
            passes = _lbp_passes()
            self.name = "OpenCV LBP cascade (via scikit-image)"
        if passes is None:
            raise CheckpointError(
                problem="No face detector is available: this OpenCV build has no Haar cascades "
                f"(OpenCV {cv2.__version__}) and scikit-image is not installed",
                expected="opencv-python-headless 4.x, scikit-image, or the yoloface_v5m.pt model",
                fix='run `pip install "opencv-python-headless<5"` or `pip install scikit-image`, or place '
                "yoloface_v5m.pt in the Sonic models folder",
            )
        self._passes = passes

    def __call__(self, image_rgb: np.ndarray) -> list[FaceBox]:
        height, width = image_rgb.shape[:2]
        scale = work_scale(width, height, WORK_LONG_SIDE, WORK_MIN_SHORT_SIDE)
        small = image_rgb
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY)
        back_x = width / gray.shape[1]
        back_y = height / gray.shape[0]
        for attempt in self._passes:
            boxes = self._run(attempt, gray)
            if boxes:
                logger.debug("%s: %d face(s) with %d neighbours", self.name, len(boxes), attempt.min_neighbors)
                return [
                    FaceBox(x * back_x, y * back_y, (x + w) * back_x, (y + h) * back_y, attempt.score)
                    for x, y, w, h in boxes
                ]
        return []

    @staticmethod
    def _run(attempt: _Pass, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        if not attempt.mirrored:
            return _merge_overlaps(attempt.detect(gray, attempt.min_neighbors))
        mirrored = np.ascontiguousarray(gray[:, ::-1])
        width = gray.shape[1]
        boxes = attempt.detect(mirrored, attempt.min_neighbors)
        return _merge_overlaps([(width - x - w, y, w, h) for x, y, w, h in boxes])


def _merge_overlaps(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Drop a box that mostly lies inside a larger one (cascades report one face at two scales)."""
    kept: list[tuple[int, int, int, int]] = []
    for box in sorted(boxes, key=lambda b: b[2] * b[3], reverse=True):
        x, y, w, h = box
        inside = False
        for kx, ky, kw, kh in kept:
            overlap_w = max(0, min(x + w, kx + kw) - max(x, kx))
            overlap_h = max(0, min(y + h, ky + kh) - max(y, ky))
            if overlap_w * overlap_h > 0.5 * w * h:
                inside = True
                break
        if not inside:
            kept.append(box)
    return kept
