"""The official repository's example inputs, through a real ComfyUI server whose input folder *is* the examples
folder of ../shared/reference/sonic-official (read there, never copied in).

They are six pictures (two real photos, a marble bust, a 3D-cartoon girl, and two QR-code posters of the
project's chat group) and four clips of real speech and singing (wav and MP3). Each one must either run to a video
or be refused with one of our error types and an actionable message; the server keeps serving. Used by
tests/test_hardening_real_inputs.py and bench/bench_real_inputs.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from comfy_host import REPO, ComfyServer
from hardening_cases import Case, quick_prompt

EXAMPLES = REPO.parent / "shared" / "reference" / "sonic-official" / "examples"
IMAGES = EXAMPLES / "image"
SOUNDS = EXAMPLES / "wav"
# Each picture runs with real speech; each sound with the real photo that every detector finds.
SPEECH_FOR_PICTURES = "wav/talk_male_law_10s.wav"
PICTURE_FOR_SOUNDS = "image/leonnado.jpg"
SERVER_NODES = ("SonicGuardModelLoader", "SonicGuardLoadImage", "SonicGuardLoadAudio", "SonicGuardGenerate")
# 1 s: long enough for the audio features of every clip to be computed, short enough for the suite.
SECONDS = 1.0


def require_examples() -> None:
    """The examples ship with ../shared; without them these checks cannot mean anything, so they fail."""
    missing = [p for p in (IMAGES, SOUNDS) if not p.is_dir()]
    if missing:
        raise FileNotFoundError(f"the official examples are missing: {', '.join(map(str, missing))}; "
                                "they are read from ../shared/reference/sonic-official/examples beside the repo")


def _picture_case(name: str) -> Case:
    return Case(f"picture:{name}", "real_input",
                lambda _base: quick_prompt(image=f"image/{name}", audio=SPEECH_FOR_PICTURES, duration=SECONDS),
                accepted=True)


def _sound_case(name: str) -> Case:
    return Case(f"sound:{name}", "real_input",
                lambda _base: quick_prompt(image=PICTURE_FOR_SOUNDS, audio=f"wav/{name}", duration=SECONDS),
                accepted=True)


def real_input_cases() -> list[Case]:
    """One case per example file. `accepted` means a refusal at queue time counts against us (the files exist);
    hardening_server.evaluate counts a run to a video, or one of our errors with Expected/Fix, as handled."""
    require_examples()
    pictures = sorted(p.name for p in IMAGES.iterdir() if p.is_file())
    sounds = sorted(p.name for p in SOUNDS.iterdir() if p.is_file())
    return [*map(_picture_case, pictures), *map(_sound_case, sounds)]


def start_examples_server(base: Path, tiny_models: Path | None = None) -> ComfyServer:
    """A CPU server with the small random model set whose input folder is the (read-only) examples folder."""
    import shutil

    from sonic_guard.models.tiny import write_tiny_model_set

    require_examples()
    target = base / "models" / "sonic" / "tiny-sonic"
    if tiny_models is not None:
        shutil.copytree(tiny_models, target)
    else:
        write_tiny_model_set(target, seed=0)
    return ComfyServer.start(base, extra_args=["--cache-none", "--input-directory", str(EXAMPLES.resolve())],
                             required_nodes=SERVER_NODES)


def opencv_faces(name: str) -> list[dict]:
    """What the fallback detector (OpenCV, used when yoloface_v5m.pt is absent) finds in an example picture, in
    pixels of the picture as loaded (EXIF applied), largest first."""
    from sonic_guard.face.detection import detect_faces
    from sonic_guard.face.opencv_detector import OpenCvFaceDetector
    from sonic_guard.inputs.image_loading import load_image_file

    picture, _ = load_image_file(IMAGES / name)
    faces = sorted(detect_faces(picture, OpenCvFaceDetector()), key=lambda f: -f.area)
    height, width = picture.shape[:2]
    return [{"box": [round(v, 1) for v in (f.x1, f.y1, f.x2, f.y2)],
             "fraction_of_picture": round(float(f.area) / float(np.prod((height, width))), 4)} for f in faces]
