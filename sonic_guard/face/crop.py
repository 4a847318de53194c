"""Crop box and face mask geometry (reference: `process_bbox` / `crop_image` and the 1.1x face mask)."""

from __future__ import annotations

import numpy as np

from ..errors import BadInputError
from .boxes import FaceBox

CropBox = tuple[int, int, int, int]

FACE_MASK_AREA = 1.1
TIGHT_FACE_RATIO = 0.7


def crop_box(face: FaceBox, image_size: tuple[int, int], expand_ratio: float) -> CropBox:
    """Square crop (x1, y1, x2, y2) around the face; `image_size` is (width, height).

    Each side grows by expand_ratio x the face width (x) or height (y), clipped to the image; the square's
    side is the shorter expanded side, centred on the expanded box, with the centre moved along the longer
    axis toward the face centre by min(|h - w| / 2, distance between the two centres).
    """
    if not np.isfinite(expand_ratio) or expand_ratio < 0:
        raise BadInputError(
            problem=f"The expand ratio {expand_ratio!r} is not usable",
            expected="a number >= 0 (0.15 to 0.5 is typical)",
            fix="set expand_ratio to 0.5, the reference demo's value",
        )
    width, height = image_size
    face_w, face_h = face.width, face.height
    x1 = max(0.0, face.x1 - expand_ratio * face_w)
    x2 = min(float(width), face.x2 + expand_ratio * face_w)
    y1 = max(0.0, face.y1 - expand_ratio * face_h)
    y2 = min(float(height), face.y2 + expand_ratio * face_h)
    box_w, box_h = x2 - x1, y2 - y1
    centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
    face_cx, face_cy = (face.x1 + face.x2) / 2, (face.y1 + face.y2) / 2
    side = min(box_w, box_h)
    slack = abs(box_h - box_w) / 2
    if box_w > box_h:
        centre_x += float(np.sign(face_cx - centre_x)) * min(slack, abs(face_cx - centre_x))
    elif box_h > box_w:
        centre_y += float(np.sign(face_cy - centre_y)) * min(slack, abs(face_cy - centre_y))
    # Round the side once and place both ends from it, so the box is exactly square and inside the image.
    side_px = max(1, int(round(side)))
    left = min(max(int(round(centre_x - side / 2)), 0), max(width - side_px, 0))
    top = min(max(int(round(centre_y - side / 2)), 0), max(height - side_px, 0))
    return left, top, left + side_px, top + side_px


def recommend_expand_ratio(face: FaceBox, image_size: tuple[int, int]) -> tuple[float, str]:
    """A suggested expand ratio and why: a face that already fills the frame needs less margin."""
    width, height = image_size
    fill = max(face.width / width, face.height / height)
    if fill >= TIGHT_FACE_RATIO:
        return 0.15, (
            f"The face fills {fill:.0%} of the image; expand ratio 0.15 is suggested "
            "(the photo is already tight around the face)."
        )
    return 0.20, (
        f"The face fills {fill:.0%} of the image; expand ratio 0.20 is suggested "
        "(keeps hair and chin in the crop without too much background)."
    )


def face_mask_box(face: FaceBox, image_size: tuple[int, int], area: float = FACE_MASK_AREA) -> CropBox:
    """The reference's face-mask box: the detector's float box scaled by `area` around its centre.

    Kept in floats as the reference does: the centre and the half sizes are floor divisions of floats,
    the box is clipped to the image, and only then cast with int() (so a box at x1 = 100.75 does not
    move the mask by the pixel an early int() would).
    """
    width, height = image_size
    # The reference detector reports (x1, y1, w, h) and the mask code adds w back: do the same.
    x1, y1 = float(face.x1), float(face.y1)
    x2, y2 = x1 + float(face.width), y1 + float(face.height)
    scaled_w, scaled_h = (x2 - x1) * area, (y2 - y1) * area
    centre_x, centre_y = (x2 + x1) // 2, (y2 + y1) // 2
    left = max(centre_x - scaled_w // 2, 0)
    top = max(centre_y - scaled_h // 2, 0)
    right = min(centre_x + scaled_w // 2, width)
    bottom = min(centre_y + scaled_h // 2, height)
    return int(left), int(top), int(right), int(bottom)


def face_mask(face: FaceBox, image_size: tuple[int, int], area: float = FACE_MASK_AREA) -> np.ndarray:
    """uint8 (height, width) mask: 255 inside the enlarged face box, 0 elsewhere."""
    width, height = image_size
    mask = np.zeros((height, width), dtype=np.uint8)
    x1, y1, x2, y2 = face_mask_box(face, image_size, area)
    mask[y1:y2, x1:x2] = 255
    return mask
