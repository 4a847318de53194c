"""Reference preparation on the astronaut portrait: sizes, tensors, crop, huge inputs and bad parameters."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from sonic_guard.conditioning.reference_image import clip_pixels, prepare_reference, resized_size
from sonic_guard.errors import BadImageError, BadInputError, NoFaceError
from sonic_guard.face import FaceBox, OpenCvFaceDetector, crop_box, detect_faces, face_mask, face_mask_box

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def detector() -> OpenCvFaceDetector:
    return OpenCvFaceDetector()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def test_resize_rule() -> None:
    assert resized_size(1080, 1920, 512) == (512, 896)
    assert resized_size(1920, 1080, 512) == (896, 512)
    assert resized_size(512, 512, 512) == (512, 512)
    # 700 * (768/500) / 64 = 16.8 -> 17 * 64.
    assert resized_size(500, 700, 768) == (768, 1088)


def test_astronaut_tensors(detector: OpenCvFaceDetector, astronaut: np.ndarray) -> None:
    prepared = prepare_reference(astronaut, min_resolution=512, crop=False, detector=detector)
    assert prepared.reference.shape == (3, 512, 512) and prepared.reference.dtype == torch.float32
    assert -1.0 <= prepared.reference.min() and prepared.reference.max() <= 1.0
    expected = torch.from_numpy(astronaut).permute(2, 0, 1).float() / 127.5 - 1.0
    assert torch.allclose(prepared.reference, expected, atol=1e-6)
    mask = prepared.face_mask
    assert mask.shape == (1, 1, 512, 512) and 0.0 <= mask.min() and mask.max() <= 1.0
    face = prepared.face_box
    cx, cy = int((face.x1 + face.x2) / 2), int((face.y1 + face.y2) / 2)
    assert mask[0, 0, cy, cx] == 1.0 and mask[0, 0, 5, 5] == 0.0
    # 1.1x the face box: the mask covers a bit more than the face.
    assert 1.1 < float(mask.sum()) / face.area < 1.35
    assert prepared.clip_pixels.shape == (1, 3, 224, 224)
    assert prepared.crop_box is None and prepared.faces_found == 1 and prepared.size == (512, 512)
    assert prepared.face_box_resized == (int(face.x1), int(face.y1), round(face.x2), round(face.y2))


def test_portrait_1080x1920_becomes_512x896(detector: OpenCvFaceDetector, astronaut: np.ndarray) -> None:
    portrait = np.full((1920, 1080, 3), 200, np.uint8)
    portrait[300:1380, :] = cv2.resize(astronaut, (1080, 1080), interpolation=cv2.INTER_LINEAR)
    prepared = prepare_reference(portrait, min_resolution=512, detector=detector)
    assert prepared.reference.shape == (3, 896, 512)
    assert prepared.face_mask.shape == (1, 1, 896, 512)
    # The astronaut's face (x 175-270, y 67-165 of 512) enlarged by 1080/512, moved down by 300 px,
    # then scaled by 512/1080 into the reference: x 175-270, y 209-307.
    x1, y1, x2, y2 = prepared.face_box_resized
    assert 160 < x1 < 190 and 190 < y1 < 225 and 255 < x2 < 290 and 290 < y2 < 325
    assert isinstance(x1, int)
    # LANCZOS on the 0/255 mask leaves soft (and not re-binarised) edges.
    values = prepared.face_mask.flatten()
    assert bool(((values > 0.01) & (values < 0.99)).any())


def test_crop_square_around_face(detector: OpenCvFaceDetector, astronaut: np.ndarray) -> None:
    wide = np.pad(astronaut, ((0, 0), (300, 300), (0, 0)), constant_values=30)
    prepared = prepare_reference(wide, min_resolution=512, expand_ratio=0.5, crop=True, detector=detector)
    assert prepared.crop_box == crop_box(prepared.face_box, (1112, 512), 0.5)
    x1, y1, x2, y2 = prepared.crop_box
    assert x2 - x1 == y2 - y1 and x1 > 300
    assert prepared.reference.shape == (3, 512, 512)
    assert any("enlarged" in w for w in prepared.warnings)


def test_clip_pixels_use_clip_defaults() -> None:
    grey = np.full((512, 512, 3), 128, np.uint8)
    pixels = clip_pixels(grey)
    for channel in range(3):
        expected = (128 / 255 - CLIP_MEAN[channel]) / CLIP_STD[channel]
        assert torch.allclose(pixels[0, channel], torch.tensor(expected), atol=1e-4)


def test_huge_8k_image(detector: OpenCvFaceDetector, astronaut: np.ndarray) -> None:
    big = cv2.resize(astronaut, (4320, 4320), interpolation=cv2.INTER_LINEAR)
    huge = np.pad(big, ((0, 0), (1680, 1680), (0, 0)))
    prepared = prepare_reference(huge, min_resolution=512, detector=detector)  # its time: bench/bench_huge_image.py
    assert prepared.reference.shape == (3, 512, 896)
    assert 3168 - 150 < prepared.face_box.x1 < 3168 + 150


def test_comfy_batch_float_tensor(detector: OpenCvFaceDetector, astronaut: np.ndarray) -> None:
    batch = torch.from_numpy(np.stack([astronaut, astronaut[::-1]])).float() / 255.0
    prepared = prepare_reference(batch, min_resolution=512, detector=detector)
    assert any("batch of 2" in w for w in prepared.warnings)
    expected = torch.from_numpy(astronaut).permute(2, 0, 1).float() / 127.5 - 1.0
    assert torch.allclose(prepared.reference, expected, atol=1e-5)


@pytest.mark.parametrize("value", [500, 64, 4096, 512.0])
def test_bad_min_resolution(detector: OpenCvFaceDetector, astronaut: np.ndarray, value: object) -> None:
    with pytest.raises(BadInputError, match="min_resolution"):
        prepare_reference(astronaut, min_resolution=value, detector=detector)  # type: ignore[arg-type]


def test_no_face_and_tiny(detector: OpenCvFaceDetector) -> None:
    with pytest.raises(NoFaceError):
        prepare_reference(np.full((300, 300, 3), 90, np.uint8), detector=detector)
    for size in (1, 32):
        with pytest.raises(BadImageError, match="pixels"):
            prepare_reference(Image.new("RGB", (size, size)), detector=detector)


class _ReportedBoxDetector:
    """The detector boundary: reports the float boxes a detector model gave (one past the left edge)."""

    name = "reported boxes"

    def __init__(self, boxes: list[FaceBox]) -> None:
        self.boxes = boxes

    def __call__(self, image_rgb: np.ndarray) -> list[FaceBox]:
        return list(self.boxes)


def test_detector_float_box_reaches_the_face_mask(astronaut: np.ndarray) -> None:
    # A face cut by the left border as YOLOv5-face reports it (x1 < 0), and a box wholly outside the image.
    border_face = FaceBox(-6.5, 60.25, 93.75, 171.5, 0.9)
    outside = FaceBox(-300.0, 10.0, -200.0, 110.0, 0.95)
    detector = _ReportedBoxDetector([border_face, outside])
    assert detect_faces(astronaut, detector) == [border_face]
    prepared = prepare_reference(astronaut, min_resolution=512, detector=detector)
    # Not clipped on the way: the mask is built from the detector's own floats.
    assert prepared.face_box == border_face
    # Centre 87.25 // 2 = 43, ww 110.275 -> 55: 0..98; centre 231.75 // 2 = 115, hh 122.375 -> 61: 54..176.
    assert face_mask_box(border_face, (512, 512)) == (0, 54, 98, 176)
    expected = np.asarray(face_mask(border_face, (512, 512)), dtype=np.float32) / 255.0
    assert torch.equal(prepared.face_mask[0, 0], torch.from_numpy(expected))


def _banner(astronaut: np.ndarray, wide: bool) -> tuple[np.ndarray, tuple[float, float]]:
    """A 4000x300 (or 300x4000) real photo (the coffee cup, no face) with the astronaut's head and shoulders
    pasted in at full banner height (face ~110 px); returns the image and where the face centre should be."""
    scale = 300 / 260
    head = cv2.resize(astronaut[0:260, 90:360], (round(270 * scale), 300), interpolation=cv2.INTER_LINEAR)
    # Her face spans x 175-270, y 65-165 of the 512x512 photo: centre (222, 115).
    centre = ((222 - 90) * scale, 115 * scale)
    if wide:
        image = cv2.resize(data.coffee(), (4000, 300), interpolation=cv2.INTER_AREA)
        image[:, 1800 : 1800 + head.shape[1]] = head
        return image, (1800 + centre[0], centre[1])
    image = cv2.resize(data.coffee(), (300, 4000), interpolation=cv2.INTER_AREA)
    image[1800:2100] = head[:, :300]
    return image, (centre[0], 1800 + centre[1])


@pytest.mark.parametrize("wide", [True, False], ids=["4000x300", "300x4000"])
def test_banner_keeps_its_face_size(detector: OpenCvFaceDetector, astronaut: np.ndarray, wide: bool) -> None:
    # Cutting the long side to 2048 and then 800 px shrank this face to ~22 px: NoFaceError in both orientations.
    image, (cx, cy) = _banner(astronaut, wide)
    prepared = prepare_reference(image, min_resolution=512, detector=detector)
    face = prepared.face_box
    assert abs((face.x1 + face.x2) / 2 - cx) < 20 and abs((face.y1 + face.y2) / 2 - cy) < 20, (face, cx, cy)
    assert 85 < face.width < 140 and 85 < face.height < 140
    assert prepared.faces_found == 1 and face.score == 1.0  # the strict frontal pass, not a fallback
    assert prepared.reference.shape == ((3, 512, 6848) if wide else (3, 6848, 512))
    scale = 512 / 300
    assert prepared.face_mask[0, 0, int(cy * scale), int(cx * scale)] == 1.0
