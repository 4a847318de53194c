"""The bundled cascade detector on real photos (scikit-image's astronaut portrait)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from sonic_guard.errors import BadImageError, NoFaceError
from sonic_guard.face import (
    FaceBox,
    OpenCvFaceDetector,
    YoloFaceDetector,
    crop_box,
    detect_faces,
    find_main_face,
    make_face_detector,
)
from sonic_guard.face.opencv_detector import work_scale


@pytest.fixture(scope="module")
def detector() -> OpenCvFaceDetector:
    return OpenCvFaceDetector()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def _assert_astronaut_face(face: FaceBox, offset: tuple[float, float] = (0, 0), scale: float = 1.0) -> None:
    # Eileen Collins' face spans roughly x 175-270, y 65-165 in the 512x512 photo.
    cx = (face.x1 + face.x2) / 2 / scale - offset[0]
    cy = (face.y1 + face.y2) / 2 / scale - offset[1]
    assert 205 < cx < 240 and 100 < cy < 135, (cx, cy)
    assert 75 < face.width / scale < 125 and 75 < face.height / scale < 125


def test_astronaut_portrait(detector: OpenCvFaceDetector, astronaut: np.ndarray) -> None:
    face, faces, warnings = find_main_face(astronaut, detector)
    _assert_astronaut_face(face)
    assert len(faces) == 1 and warnings == []
    assert detector.name.startswith("OpenCV")


@pytest.mark.parametrize("which", ["coffee", "flat"])
def test_no_face(detector: OpenCvFaceDetector, which: str) -> None:
    image = data.coffee() if which == "coffee" else np.full((300, 400, 3), 128, np.uint8)
    with pytest.raises(NoFaceError) as info:
        find_main_face(image, detector)
    message = str(info.value)
    assert "frontal face" in message and "crop the photo tighter" in message and "different photo" in message


def test_two_faces_pick_largest_and_warn(detector: OpenCvFaceDetector, astronaut: np.ndarray) -> None:
    small = np.pad(astronaut[::2, ::2], ((0, 256), (0, 0), (0, 0)), constant_values=128)
    pair = np.concatenate([astronaut, small], axis=1)
    face, faces, warnings = find_main_face(pair, detector)
    _assert_astronaut_face(face)
    assert len(faces) >= 2
    assert any(512 + 80 < (f.x1 + f.x2) / 2 < 512 + 140 and (f.y1 + f.y2) / 2 < 80 for f in faces)
    assert f"Found {len(faces)} faces" in warnings[0] and "largest" in warnings[0]


def test_face_touching_the_border(detector: OpenCvFaceDetector, astronaut: np.ndarray) -> None:
    edge = np.ascontiguousarray(astronaut[60:, 170:])
    face = detect_faces(edge, detector)[0]
    assert face.x1 < 20 and face.y1 < 20
    x1, y1, x2, y2 = crop_box(face, (edge.shape[1], edge.shape[0]), 0.5)
    assert x1 == 0 and y1 == 0
    assert x2 - x1 == y2 - y1 and x2 <= edge.shape[1] and y2 <= edge.shape[0]
    # The square still holds the whole face.
    assert face.x2 <= x2 and face.y2 <= y2


@pytest.mark.parametrize("shape", [(1, 1, 3), (32, 32, 3), (40, 900, 3)])
def test_tiny_images_are_refused(detector: OpenCvFaceDetector, shape: tuple[int, int, int]) -> None:
    with pytest.raises(BadImageError, match="pixels"):
        detect_faces(np.zeros(shape, np.uint8), detector)


def test_wrong_array_kinds(detector: OpenCvFaceDetector) -> None:
    with pytest.raises(BadImageError, match="shape"):
        detect_faces(np.zeros((100, 100), np.uint8), detector)
    with pytest.raises(BadImageError, match="dtype"):
        detect_faces(np.zeros((100, 100, 3), np.float32), detector)


def test_huge_image_finds_the_face(detector: OpenCvFaceDetector, astronaut: np.ndarray) -> None:
    # How long an 8K portrait takes (vs 2K and 4K): bench/bench_huge_image.py.
    big = cv2.resize(astronaut, (4320, 4320), interpolation=cv2.INTER_LINEAR)
    huge = np.pad(big, ((0, 0), (1680, 1680), (0, 0)))
    assert huge.shape == (4320, 7680, 3)
    face = detect_faces(huge, detector)[0]
    _assert_astronaut_face(face, offset=(1680 / (4320 / 512), 0), scale=4320 / 512)


def test_make_face_detector_choice(tmp_path: Path) -> None:
    assert isinstance(make_face_detector(None), OpenCvFaceDetector)
    assert isinstance(make_face_detector(tmp_path / "yoloface_v5m.pt"), OpenCvFaceDetector)
    assert not isinstance(make_face_detector(None), YoloFaceDetector)


def test_cartoon_face_gets_the_same_advice(detector: OpenCvFaceDetector) -> None:
    # A drawn smiley: no photographic face for a cascade to find.
    cartoon = np.full((400, 400, 3), 255, np.uint8)
    cv2.circle(cartoon, (200, 200), 120, (255, 220, 0), -1)
    cv2.circle(cartoon, (155, 170), 15, (0, 0, 0), -1)
    cv2.circle(cartoon, (245, 170), 15, (0, 0, 0), -1)
    cv2.ellipse(cartoon, (200, 240), (60, 30), 0, 0, 180, (0, 0, 0), 6)
    with pytest.raises(NoFaceError) as info:
        find_main_face(cartoon, detector)
    assert "cartoon" in str(info.value) and "yoloface_v5m.pt" in str(info.value)


@pytest.mark.parametrize(
    "size,expected",
    [
        ((4000, 300), 1.0),  # a banner: 800 px long would leave a 60 px short side; it is not shrunk
        ((8000, 600), 0.75),  # the short side stops at 450
        ((7680, 4320), 800 / 7680),  # 16:9 and squarer photos: the long side rule, as before
        ((3000, 3000), 800 / 3000),
        ((640, 480), 1.0),
    ],
)
def test_work_scale_keeps_the_short_side(size: tuple[int, int], expected: float) -> None:
    assert work_scale(*size, long_side=800, min_short_side=450) == pytest.approx(expected, rel=1e-12)
