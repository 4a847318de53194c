"""YOLOv5-face wrapper: input size, grids, decoding and NMS, with a small TorchScript stand-in model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sonic_guard.errors import CheckpointError
from sonic_guard.face import YoloFaceDetector, detect_faces, make_face_detector
from sonic_guard.face.yolo_detector import decode_predictions, make_grids, yolo_input_size

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


class _StandInFaceModel(torch.nn.Module):
    """Answers like yoloface_v5m.pt: one face at the image centre whose objectness is the red channel mean.

    A blue image therefore has no face, which shows the wrapper feeds RGB scaled to [0, 1].
    """

    def forward(self, img: torch.Tensor, grids: list[torch.Tensor]) -> torch.Tensor:
        height, width = img.shape[2], img.shape[3]
        strides = [8, 16, 32]
        for index in range(3):
            assert grids[index].shape[2] == height // strides[index]
            assert grids[index].shape[3] == width // strides[index]
        red = img[0, 0].mean()
        row = torch.zeros(16)
        row[0] = width / 2.0
        row[1] = height / 2.0
        row[2] = width / 4.0
        row[3] = height / 4.0
        row[4] = red
        for point in range(5):
            row[5 + 2 * point] = width / 2.0 + point
            row[6 + 2 * point] = height / 2.0
        row[15] = 1.0
        weak = row.clone()
        weak[4] = 0.3
        return torch.stack([row, weak])[None]


@pytest.fixture()
def stand_in(tmp_path: Path) -> Path:
    path = tmp_path / "yoloface_v5m.pt"
    torch.jit.save(torch.jit.script(_StandInFaceModel()), str(path))
    return path


def test_input_size_rule() -> None:
    assert yolo_input_size(1080, 1920) == (416, 768)
    assert yolo_input_size(512, 512) == (416, 416)
    # r = 416/333: 500*r = 624.6 -> (624.6+31)//32*32 = 640; the short side stays 416.
    assert yolo_input_size(500, 333) == (640, 416)


def test_grids_hold_cell_indices() -> None:
    grids = make_grids(416, 768)
    assert [tuple(g.shape) for g in grids] == [(1, 1, 52, 96, 2), (1, 1, 26, 48, 2), (1, 1, 13, 24, 2)]
    assert grids[0][0, 0, 3, 5].tolist() == [5.0, 3.0]
    assert grids[2].dtype == torch.float32


def test_decode_thresholds_nms_and_rescale() -> None:
    rows = torch.zeros(1, 5, 16)
    rows[0, 0, :5] = torch.tensor([100.0, 100.0, 40.0, 60.0, 0.9])
    rows[0, 0, 15] = 0.9
    rows[0, 1, :5] = torch.tensor([102.0, 101.0, 40.0, 60.0, 0.8])  # overlaps face 0 with a lower score
    rows[0, 1, 15] = 0.9
    rows[0, 2, :5] = torch.tensor([300.0, 200.0, 20.0, 20.0, 0.95])
    rows[0, 2, 15] = 0.6  # 0.95 * 0.6 = 0.57 passes
    rows[0, 3, :5] = torch.tensor([50.0, 300.0, 20.0, 20.0, 0.9])
    rows[0, 3, 15] = 0.5  # 0.45 fails the product threshold
    rows[0, 4, :5] = torch.tensor([200.0, 300.0, 20.0, 20.0, 0.4])
    rows[0, 4, 15] = 1.0  # objectness alone fails
    rows[0, 0, 5:15] = torch.arange(10, dtype=torch.float32)
    faces = decode_predictions(rows, scale_x=2.0, scale_y=0.5)
    assert len(faces) == 2
    first = faces[0]
    assert (first.x1, first.y1, first.x2, first.y2) == (160.0, 35.0, 240.0, 65.0)
    assert first.score == pytest.approx(0.81)
    assert first.landmarks is not None and first.landmarks[1] == (4.0, 1.5)
    assert faces[1].score == pytest.approx(0.57)
    assert decode_predictions(torch.zeros(1, 3, 16), 1.0, 1.0) == []


def test_torchscript_detector_end_to_end(stand_in: Path) -> None:
    detector = make_face_detector(stand_in)
    assert isinstance(detector, YoloFaceDetector)
    red = np.zeros((300, 500, 3), np.uint8)
    red[..., 0] = 255
    faces = detect_faces(red, detector)
    assert len(faces) == 1
    face = faces[0]
    # Resized to 416x704 and back: the centre face is (250, 150), a quarter of each side.
    assert face.x1 == pytest.approx(187.5, abs=0.01) and face.x2 == pytest.approx(312.5, abs=0.01)
    assert face.y1 == pytest.approx(112.5, abs=0.01) and face.y2 == pytest.approx(187.5, abs=0.01)
    assert face.score == pytest.approx(1.0)
    blue = np.zeros((300, 500, 3), np.uint8)
    blue[..., 2] = 255
    assert detect_faces(blue, detector) == []


def test_bad_checkpoint_files(tmp_path: Path) -> None:
    broken = tmp_path / "yoloface_v5m.pt"
    broken.write_bytes(b"not a torchscript archive")
    with pytest.raises(CheckpointError, match="TorchScript"):
        YoloFaceDetector(broken)
    with pytest.raises(CheckpointError, match="not found"):
        YoloFaceDetector(tmp_path / "missing.pt")
