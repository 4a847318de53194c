"""The reference face detector: YOLOv5-face exported as TorchScript (`yoloface_v5m.pt`).

Input and output follow the reference wrapper: RGB in [0, 1] resized so the short side is ~416 and both
sides are multiples of 32 (no letterbox), three cell-index grids for strides 8/16/32, output (1, A, 16) =
cx, cy, w, h, objectness, 5 landmark (x, y) pairs, class score, in resized-image pixels.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.ops import nms

from ..errors import CheckpointError
from .boxes import FaceBox

logger = logging.getLogger(__name__)

TARGET_SHORT_SIDE = 416
STRIDES = (8, 16, 32)
CONF_THRESHOLD = 0.5
IOU_THRESHOLD = 0.45


def yolo_input_size(height: int, width: int) -> tuple[int, int]:
    """(h1, w1): scale the short side to 416, then round each side up to a multiple of 32."""
    ratio = TARGET_SHORT_SIDE / min(height, width)
    return int((height * ratio + 31) // 32 * 32), int((width * ratio + 31) // 32 * 32)


def make_grids(height: int, width: int) -> list[torch.Tensor]:
    """One (1, 1, ny, nx, 2) tensor of (x, y) cell indices per stride."""
    grids = []
    for stride in STRIDES:
        rows, cols = height // stride, width // stride
        yy, xx = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        grids.append(torch.stack((xx, yy), dim=2).view(1, 1, rows, cols, 2).float())
    return grids


def decode_predictions(
    prediction: torch.Tensor,
    scale_x: float,
    scale_y: float,
    conf_threshold: float = CONF_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
) -> list[FaceBox]:
    """(1, A, 16) raw detections -> faces in original-image pixels, after the YOLOv5-face NMS."""
    rows = prediction.detach().float().cpu().reshape(-1, prediction.shape[-1])
    rows = rows[rows[:, 4] > conf_threshold]  # objectness pre-filter, as YOLOv5-face does
    if rows.numel() == 0:
        return []
    scores = rows[:, 4] * rows[:, 15]
    rows, scores = rows[scores > conf_threshold], scores[scores > conf_threshold]
    if rows.numel() == 0:
        return []
    centre, size = rows[:, 0:2], rows[:, 2:4]
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    keep = nms(boxes, scores, iou_threshold)
    faces = []
    for index in keep.tolist():
        x1, y1, x2, y2 = boxes[index].tolist()
        points = rows[index, 5:15].view(5, 2).tolist()
        faces.append(
            FaceBox(
                x1 * scale_x,
                y1 * scale_y,
                x2 * scale_x,
                y2 * scale_y,
                float(scores[index]),
                tuple((x * scale_x, y * scale_y) for x, y in points),
            )
        )
    return faces


class YoloFaceDetector:
    """Loads the TorchScript file from the path the caller gives (the models folder) and nowhere else."""

    name = "YOLOv5-face"

    def __init__(self, torchscript_path: Path, device: str | torch.device = "cpu") -> None:
        path = Path(torchscript_path)
        if not path.is_file():
            raise CheckpointError(
                problem=f"The face detector file {path.name} was not found in {path.parent}",
                expected="yoloface_v5m.pt from the Sonic checkpoints",
                fix="download the Sonic checkpoints into the models folder, or leave the detector on OpenCV",
            )
        try:
            with warnings.catch_warnings():
                # Recent torch marks TorchScript deprecated; the reference detector exists only in it.
                warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
                self._model = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError, OSError) as exc:
            raise CheckpointError(
                problem=f"The face detector file {path.name} could not be loaded as TorchScript ({exc})",
                expected="the original yoloface_v5m.pt TorchScript archive",
                fix="download yoloface_v5m.pt again; the file is truncated or not the expected one",
            ) from exc
        self._device = torch.device(device)

    def __call__(self, image_rgb: np.ndarray) -> list[FaceBox]:
        height, width = image_rgb.shape[:2]
        new_h, new_w = yolo_input_size(height, width)
        resized = cv2.resize(image_rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        tensor = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None].float().div(255.0)
        grids = [grid.to(self._device) for grid in make_grids(new_h, new_w)]
        with torch.inference_mode():
            output = self._model(tensor.to(self._device), grids)
        if isinstance(output, (tuple, list)):
            output = output[0]
        if output.ndim != 3 or output.shape[-1] != 16:
            raise CheckpointError(
                problem=f"The face detector returned shape {tuple(output.shape)}",
                expected="(1, anchors, 16) as yoloface_v5m.pt produces",
                fix="use the original yoloface_v5m.pt from the Sonic checkpoints",
            )
        faces = decode_predictions(output, width / new_w, height / new_h)
        logger.debug(
            "YOLOv5-face: %d face(s) in a %dx%d image (network input %dx%d)",
            len(faces),
            width,
            height,
            new_w,
            new_h,
        )
        return faces
