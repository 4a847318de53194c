"""Crop, mask and face-choice geometry against numbers computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from sonic_guard.errors import BadInputError, NoFaceError
from sonic_guard.face import (
    FaceBox,
    crop_box,
    face_mask,
    face_mask_box,
    recommend_expand_ratio,
    select_largest_face,
)


@pytest.mark.parametrize(
    "face,image_size,ratio,expected",
    [
        # Expanded 50..250 x 25..325 (200x300): side 200, centres agree, no shift.
        ((100, 100, 200, 250), (1000, 1000), 0.5, (50, 75, 250, 275)),
        # Left side clipped at 0: expanded 0..170 x 50..250; side 170 centred on y=150.
        ((20, 100, 120, 200), (400, 400), 0.5, (0, 65, 170, 235)),
        # Clipped right and top: expanded 250..420 x 0..160; side 160, centre x 335 moves 5 px toward 350.
        ((300, 10, 400, 110), (420, 1000), 0.5, (260, 0, 420, 160)),
        # The same along y.
        ((10, 300, 110, 400), (1000, 420), 0.5, (0, 260, 160, 420)),
        # expand_ratio 0: the face box itself, squared to its short side around its centre.
        ((10, 20, 50, 80), (200, 200), 0.0, (10, 30, 50, 70)),
    ],
)
def test_crop_box_reference_geometry(
    face: tuple[int, int, int, int],
    image_size: tuple[int, int],
    ratio: float,
    expected: tuple[int, int, int, int],
) -> None:
    box = crop_box(FaceBox(*face), image_size, ratio)
    assert box == expected
    x1, y1, x2, y2 = box
    assert x2 - x1 == y2 - y1
    assert 0 <= x1 and 0 <= y1 and x2 <= image_size[0] and y2 <= image_size[1]


def test_crop_box_rejects_bad_ratio() -> None:
    with pytest.raises(BadInputError, match="expand ratio"):
        crop_box(FaceBox(0, 0, 10, 10), (100, 100), -0.1)


def test_recommend_expand_ratio() -> None:
    ratio, why = recommend_expand_ratio(FaceBox(0, 0, 80, 50), (100, 100))
    assert ratio == 0.15 and "80%" in why
    ratio, why = recommend_expand_ratio(FaceBox(0, 0, 50, 50), (100, 100))
    assert ratio == 0.20 and "50%" in why


def test_face_mask_box_and_mask() -> None:
    face = FaceBox(100, 100, 200, 250)
    # Centre (150, 175); 110 // 2 = 55 and 165.00000000000003 // 2 = 82 (float floor division).
    assert face_mask_box(face, (400, 400)) == (95, 93, 205, 257)
    mask = face_mask(face, (400, 400))
    assert mask.shape == (400, 400) and mask.dtype == np.uint8
    assert mask[93:257, 95:205].min() == 255
    assert int(mask.sum()) == 110 * 164 * 255
    # At the border the enlarged box is clipped, not wrapped.
    assert face_mask_box(FaceBox(0, 0, 100, 100), (100, 100)) == (0, 0, 100, 100)
    assert face_mask_box(FaceBox(0.7, 0.2, 100.9, 60.5), (300, 300), area=1.0) == (0, 0, 100, 60)


@pytest.mark.parametrize(
    "face,image_size,area,expected",
    [
        # x: w 99.5, ww 109.45 -> 54; centre 301.0 // 2 = 150 -> 96..204.
        # y: h 151.25, hh 166.375 -> 83; centre 232.25 // 2 = 116 -> 33..199.
        # (Casting the box to ints first gave (95, 31, 205, 198).)
        ((100.75, 40.5, 200.25, 191.75), (400, 400), 1.1, (96, 33, 204, 199)),
        # The centre is floored: 41.5 // 2 = 20 (not 20.75), 20.5 // 2 = 10 -> 10..30;
        # 80.25 // 2 = 40, 39.75 // 2 = 19 -> 21..59. (Ints first: (9, 20, 30, 60).)
        ((10.5, 20.25, 31.0, 60.0), (100, 100), 1.0, (10, 21, 30, 59)),
        # A detector box past the border, unclipped: x centre 47 // 2 = 23, ww 66 -> 33: max(-10, 0)..56;
        # y centre 601 // 2 = 300, hh 44.55 -> 22: 278..min(322, 300).
        ((-6.5, 280.25, 53.5, 320.75), (300, 300), 1.1, (0, 278, 56, 300)),
        # Floor of a negative centre: -10.5 // 2 = -6, ww 33.55 -> 16: max(-22, 0)..10 (ints first: ..11);
        # y centre 25, hh 55.00000000000001 -> 27: max(-2, 0)..52.
        ((-20.5, 0.0, 10.0, 50.0), (100, 100), 1.1, (0, 0, 10, 52)),
    ],
)
def test_face_mask_box_reference_rule_on_float_boxes(
    face: tuple[float, float, float, float],
    image_size: tuple[int, int],
    area: float,
    expected: tuple[int, int, int, int],
) -> None:
    box = face_mask_box(FaceBox(*face), image_size, area)
    assert box == expected
    assert all(isinstance(value, int) for value in box)
    x1, y1, x2, y2 = expected
    mask = face_mask(FaceBox(*face), image_size, area)
    assert int(mask.sum()) == (x2 - x1) * (y2 - y1) * 255 and mask[y1:y2, x1:x2].min() == 255


def test_select_largest_face_is_really_the_largest() -> None:
    faces = [FaceBox(0, 0, 10, 10), FaceBox(0, 0, 20, 20), FaceBox(0, 0, 10, 20), FaceBox(0, 0, 15, 20)]
    # The reference's loop would keep the last face bigger than face 0 (the 15x20 one).
    assert select_largest_face(faces) is faces[1]
    with pytest.raises(NoFaceError, match="No face"):
        select_largest_face([])


def test_face_box_helpers() -> None:
    face = FaceBox(10, 20, 30, 60, 0.9, ((15.0, 30.0),) * 5)
    scaled = face.scaled(2.0, 0.5)
    assert (scaled.x1, scaled.y1, scaled.x2, scaled.y2) == (20, 10, 60, 30)
    assert scaled.landmarks is not None and scaled.landmarks[0] == (30.0, 15.0)
    assert face.area == 800
    assert FaceBox(-5, -5, 500, 20).clipped(100, 100) == FaceBox(0, 0, 100, 20)


def test_crop_box_is_square_inside_and_holds_the_face_centre() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        width, height = (int(v) for v in rng.integers(64, 2000, size=2))
        x1, x2 = sorted(rng.uniform(0, width, size=2))
        y1, y2 = sorted(rng.uniform(0, height, size=2))
        face = FaceBox(float(x1), float(y1), float(x2) + 1, float(y2) + 1).clipped(width, height)
        box = crop_box(face, (width, height), float(rng.uniform(0, 1.5)))
        assert box[2] - box[0] == box[3] - box[1] >= 1
        assert box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height
        centre_x, centre_y = (face.x1 + face.x2) / 2, (face.y1 + face.y2) / 2
        assert box[0] - 1 <= centre_x <= box[2] + 1 and box[1] - 1 <= centre_y <= box[3] + 1
