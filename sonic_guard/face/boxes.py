"""A detected face (`FaceBox`) and what a detector is (`FaceDetector`); imports no detector."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class FaceBox:
    """A detected face in pixel coordinates (x2, y2 exclusive), with an optional 5-point landmark set.

    Floats as the detector reports them; a face at the border may reach past the image edge (the reference
    keeps such boxes unclipped for its crop and face mask, which clip only their own results).
    """

    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0
    landmarks: tuple[tuple[float, float], ...] | None = None

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def scaled(self, scale_x: float, scale_y: float) -> FaceBox:
        """The same face in an image resized by (scale_x, scale_y)."""
        points = None
        if self.landmarks is not None:
            points = tuple((x * scale_x, y * scale_y) for x, y in self.landmarks)
        return FaceBox(self.x1 * scale_x, self.y1 * scale_y, self.x2 * scale_x, self.y2 * scale_y, self.score, points)

    def clipped(self, width: int, height: int) -> FaceBox:
        return FaceBox(
            min(max(self.x1, 0.0), width),
            min(max(self.y1, 0.0), height),
            min(max(self.x2, 0.0), width),
            min(max(self.y2, 0.0), height),
            self.score,
            self.landmarks,
        )


class FaceDetector(Protocol):
    """Anything that finds faces in an RGB uint8 image (H, W, 3)."""

    name: str

    def __call__(self, image_rgb: np.ndarray) -> list[FaceBox]: ...
