"""The main job: start ComfyUI headless with the pack, queue the basic example workflow, print where the video is.

Inputs are embedded defaults: scikit-image's astronaut portrait and a sentence spoken by espeak-ng. Models are the
real Sonic weights when present (SONIC_GUARD_MODELS, or a folder under the demo's models/sonic/), otherwise a small
random model in the official layout, generated here and announced as such.

    .venv/bin/python scripts/demo.py [--out out/demo] [--keep-server]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the pack's core, for the small model writer

from comfy_host import REPO, ComfyServer, execution_error  # noqa: E402

logger = logging.getLogger("sonic_guard.demo")
WORKFLOW = REPO / "workflows" / "sonic_basic_api.json"
SPEECH = "Hello! I am a portrait that learned to talk. Sonic Guard planned my memory before I said a word."


def prepare_models(models_dir: Path) -> tuple[str, bool]:
    """Link real weights if the user has them; otherwise write the small random model. Returns (name, real)."""
    real = os.environ.get("SONIC_GUARD_MODELS")
    if real and (Path(real) / "Sonic" / "unet.pth").exists():
        link = models_dir / "user-weights"
        if not link.exists():
            link.symlink_to(Path(real).resolve(), target_is_directory=True)
        return link.name, True
    for child in sorted(models_dir.iterdir()) if models_dir.exists() else []:
        if child.name != "tiny-sonic" and (child / "Sonic" / "unet.pth").exists():
            return child.name, True
    tiny = models_dir / "tiny-sonic"
    if not (tiny / "Sonic" / "unet.pth").exists():
        from sonic_guard.models.tiny import write_tiny_model_set

        write_tiny_model_set(tiny, seed=0)
    return tiny.name, False


def prepare_inputs(input_dir: Path) -> tuple[str, str]:
    from PIL import Image
    from skimage import data

    input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).save(input_dir / "demo_portrait.png")
    subprocess.run(["espeak-ng", "-w", str(input_dir / "demo_speech.wav"), SPEECH], check=True)
    return "demo_portrait.png", "demo_speech.wav"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "demo", help="base directory for the run")
    parser.add_argument("--keep-server", action="store_true", help="leave ComfyUI running (prints its URL)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    base = args.out.resolve()
    (base / "models" / "sonic").mkdir(parents=True, exist_ok=True)
    model_name, real = prepare_models(base / "models" / "sonic")
    image_name, audio_name = prepare_inputs(base / "input")

    prompt = json.loads(WORKFLOW.read_text())
    loader = next(n for n in prompt.values() if n["class_type"] == "SonicGuardModelLoader")
    generator = next(n for n in prompt.values() if n["class_type"] == "SonicGuardGenerate")
    loader["inputs"]["model_folder"] = model_name
    next(n for n in prompt.values() if n["class_type"] == "SonicGuardLoadImage")["inputs"]["image"] = image_name
    next(n for n in prompt.values() if n["class_type"] == "SonicGuardLoadAudio")["inputs"]["audio_file"] = audio_name
    if real:
        logger.info("models: real Sonic weights in %s", model_name)
    else:
        # The small model is random: its video is noise shaped by the pipeline. Keep the CPU run short.
        generator["inputs"].update(min_resolution=128, inference_steps=4)
        logger.info(
            "models: NO real weights found, so a SMALL GENERATED MODEL with random weights is used (official "
            "layout, tiny sizes). The video shows noise, not a talking face. Put real weights in %s or set "
            "SONIC_GUARD_MODELS to see Sonic itself.", base / "models" / "sonic",
        )

    logger.info("starting ComfyUI 0.3.75 headless with the pack (base directory %s)", base)
    server = ComfyServer.start(base, extra_args=["--cache-none"], required_nodes=["SonicGuardGenerate"])
    try:
        logger.info("ComfyUI at %s; queuing %s", server.url, WORKFLOW.name)
        start = time.monotonic()
        history = server.run(prompt, timeout_s=3000)
        error = execution_error(history)
        if error:
            logger.error("the workflow failed in %s: %s", error.get("node_type"), error.get("exception_message"))
            return 1
        videos = [
            item for output in history["outputs"].values() for item in output.get("images", [])
            if str(item.get("filename", "")).endswith(".mp4")
        ]
        if not videos:
            logger.error("the workflow finished without a video; log tail:\n%s", server.log_tail())
            return 1
        for item in videos:
            path = base / item.get("type", "output") / item.get("subfolder", "") / item["filename"]
            logger.info("video: %s (%.1f s wall)", path, time.monotonic() - start)
        for output in history["outputs"].values():
            for text in output.get("text", []):
                logger.info("%s", text)
        if args.keep_server:
            logger.info("server left running at %s (pid %d)", server.url, server.process.pid)
            return 0
    finally:
        if not args.keep_server:
            server.stop()
    return 0


if __name__ == "__main__":
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is missing: run bash scripts/setup.sh first")
    sys.exit(main())
