"""Portrait size vs time: face detection and reference preparation on a real photo at 2K, 4K and 8K.

Detection runs on a downscaled copy (the OpenCV detector's WORK_LONG_SIDE, image_prep's DETECT_LONG_SIDE), so
an 8K portrait should cost about what a 2K one does, plus the resizes. The photo is scikit-image's astronaut,
enlarged to the frame's height and padded left and right to 16:9, as in tests/test_face_detect.py and
tests/test_image_prep.py (which keep the functional checks: the face is found at the right place). Reported: the
median and the slowest of `--repeats` runs per size and stage, and the 8K / 2K ratio of the medians.

    .venv/bin/python bench/bench_huge_image.py [--repeats 5]  ->  bench/results/huge_image.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from results_file import write_results  # bench/ is on sys.path: run as python bench/bench_huge_image.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sonic_guard.conditioning.reference_image import prepare_reference  # noqa: E402
from sonic_guard.face import OpenCvFaceDetector, detect_faces  # noqa: E402

RESULTS = REPO / "bench" / "results" / "huge_image.json"
SIZES = {"2K": (1080, 1920), "4K": (2160, 3840), "8K": (4320, 7680)}  # (height, width)
logger = logging.getLogger("bench_huge_image")


def portrait(height: int, width: int) -> np.ndarray:
    """The astronaut enlarged to `height` and padded with black to `width`, face off-centre as in the tests."""
    from skimage import data

    square = cv2.resize(data.astronaut(), (height, height), interpolation=cv2.INTER_LINEAR)
    pad = (width - height) // 2
    return np.pad(square, ((0, 0), (pad, width - height - pad), (0, 0)))


def timed(run: Callable[[], object], repeats: int) -> dict[str, float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return {"median_s": round(statistics.median(seconds), 4), "max_s": round(max(seconds), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    detector = OpenCvFaceDetector()
    sizes: dict[str, dict] = {}
    for name, (height, width) in SIZES.items():
        image = portrait(height, width)
        detect_faces(image, detector)  # warm-up: cascade loading and first-call costs are not the image's
        sizes[name] = {
            "shape": list(image.shape),
            "detect_faces": timed(lambda image=image: detect_faces(image, detector), args.repeats),
            "prepare_reference": timed(
                lambda image=image: prepare_reference(image, min_resolution=512, detector=detector), args.repeats),
        }
        logger.info("%s %s", name, json.dumps(sizes[name]))
    ratios = {stage: round(sizes["8K"][stage]["median_s"] / sizes["2K"][stage]["median_s"], 2)
              for stage in ("detect_faces", "prepare_reference")}
    results = {"repeats": args.repeats, "sizes": sizes, "ratio_8k_over_2k": ratios,
               "note": "OpenCV cascade detector on the CPU; wall time, noisy on a shared machine"}
    write_results(args.out, results)
    print(json.dumps({"ratio_8k_over_2k": ratios, **{k: {s: v[s]["median_s"] for s in ratios}
                                                      for k, v in sizes.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
