"""The official example inputs through a real ComfyUI server, and what the fallback face detector finds on them.

    python bench/bench_real_inputs.py

Every picture and sound in ../shared/reference/sonic-official/examples (read there: the server's input folder is
that folder) is queued once on the small random model set (1 s of audio, 128 px, 1 step): each must run to a
video or be refused with one of our errors and an actionable message (tests/hardening_server.evaluate judges, as
in the hardening suite). For each picture it also records the boxes OpenCV's Haar cascade (the detector used
without yoloface_v5m.pt) finds. Writes bench/results/real_inputs.json through bench/results_file.py;
bench/bench_reliability.py reports the same counts as `real_inputs_tried` / `real_inputs_handled`.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for extra in (REPO, REPO / "tests", REPO / "scripts"):
    sys.path.insert(0, str(extra))

from hardening_cases import QUICK  # noqa: E402
from hardening_server import evaluate, server_alive  # noqa: E402
from real_inputs import (  # noqa: E402
    EXAMPLES,
    PICTURE_FOR_SOUNDS,
    SECONDS,
    SPEECH_FOR_PICTURES,
    opencv_faces,
    real_input_cases,
    start_examples_server,
)
from results_file import write_results  # noqa: E402

logger = logging.getLogger("bench_real_inputs")


def measure_real_inputs(base: Path) -> dict[str, Any]:
    """Run every example input through a fresh server under `base`; counts and one row per input."""
    cases = real_input_cases()
    server = start_examples_server(base)
    rows = []
    try:
        for case in cases:
            outcome = evaluate(server, case)
            kind, name = case.name.split(":", 1)
            row = {"input": f"{'image' if kind == 'picture' else 'wav'}/{name}", "kind": kind,
                   "outcome": outcome.stage, "handled": outcome.handled,
                   "error": outcome.exception_type or None, "message": outcome.message[:300] or None,
                   "seconds": round(outcome.seconds, 2)}
            if kind == "picture":
                row["opencv_faces"] = opencv_faces(name)
            rows.append(row)
            logger.info("%s: %s%s", case.name, outcome.stage, f" ({outcome.exception_type})"
                        if outcome.exception_type else "")
        alive = server_alive(server)
    finally:
        server.stop()
    return {"real_inputs_tried": len(rows), "real_inputs_handled": sum(r["handled"] for r in rows),
            "server_alive_after": alive, "inputs": rows}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="sonic-real-inputs-") as base:
        measured = measure_real_inputs(Path(base))
    results = {
        **measured,
        "examples": str(EXAMPLES.relative_to(REPO.parent)),
        "run": {"speech_for_pictures": SPEECH_FOR_PICTURES, "picture_for_sounds": PICTURE_FOR_SOUNDS,
                "generator_inputs": {**QUICK, "duration": SECONDS}, "models": "small random model set (tiny)",
                "face_detector": "OpenCV Haar cascade (no yoloface_v5m.pt in the model folder)"},
    }
    path = write_results(REPO / "bench" / "results" / "real_inputs.json", results)
    logger.info("%d / %d handled; wrote %s", results["real_inputs_handled"], results["real_inputs_tried"], path)
    return 0 if results["real_inputs_handled"] == results["real_inputs_tried"] else 1


if __name__ == "__main__":
    sys.exit(main())
