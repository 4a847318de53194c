"""The models users already have: single-file SVD vs the diffusers folder, resumable download, UNet file formats,
and ComfyUI's own video nodes around ours. Writes bench/results/native_models.json.

- `single_file_vs_folder_max_rel_error`: full-size random VAE + CLIP vision written in both layouts (diffusers
  folder and ComfyUI single file), loaded by our loader from each, compared on the CLIP image embeds, the VAE
  encode mean and one decode chunk in fp32 on the CPU (the largest of the three relative errors).
- `download_resume_ok`: the real huggingface_hub client against a loopback hub that cuts the connection mid-file;
  the rerun must continue with a Range request from the kept byte and give byte-identical files.
- `unet_load_s`: load time (and peak RSS) of Sonic/unet.pth vs the converted fp16 safetensors.
- `interop_cases_passed` / `interop_cases`: the real-server interop tests (core LoadImage/LoadAudio in, core
  SaveVideo / GetVideoComponents / CreateVideo out, each file decoded with PyAV), run here through pytest.

Usage: python bench/bench_native_models.py [--skip-unet]
"""

from __future__ import annotations

import argparse
import gc
import logging
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests"), str(REPO / "scripts")]

from results_file import RESULTS_DIR, write_results  # noqa: E402

logger = logging.getLogger("bench_native_models")
INTEROP_TESTS = "tests/test_interop_core_video_server.py"


def single_file_vs_folder() -> dict[str, Any]:
    import torch
    from test_models_svd_single_file import _outputs, comparison_inputs, relative_error, write_both_layouts

    from sonic_guard.models.checkpoints import load_vae_and_clip

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sonic-svd-layouts-") as folder:
        svd, single = write_both_layouts(Path(folder))
        tensors = comparison_inputs()
        outputs = {}
        for name, source in (("folder", svd), ("single_file", single)):
            vae, clip = load_vae_and_clip(source, source.parent, torch.float32)
            outputs[name] = _outputs(vae, clip, tensors)
            del vae, clip
            gc.collect()
        errors = {key: relative_error(outputs["single_file"][key], reference)
                  for key, reference in outputs["folder"].items()}
        single_bytes = single.stat().st_size
    return {"max_rel_error": max(errors.values()), "rel_error_by_output": errors, "bound": 1e-3,
            "single_file_bytes": single_bytes, "seconds": round(time.perf_counter() - started, 1),
            "what": "full-size random SVD VAE + CLIP ViT-H/14 (fp16 files), both loaded in fp32 on the CPU"}


def download_resume() -> bool:
    from native_models_download import check_download_resume

    return bool(check_download_resume())


def unet_load(width: float) -> dict[str, Any]:
    """A random UNet of `width` (1.0 = full size, 6.1 GB fp32) as unet.pth, converted by the pack's own
    converter, each file loaded in a fresh process."""
    from native_models_unet import measure_unet_load, unet_config, write_random_unet

    from sonic_guard.models.convert_unet import convert_unet

    with tempfile.TemporaryDirectory(prefix="sonic-unet-load-") as folder:
        write_random_unet(Path(folder), width)
        convert_unet(Path(folder), force=True)
        result = measure_unet_load(Path(folder))
    result["unet_width"] = width
    if width != 1.0:
        result["unet_config"] = unet_config(width)
    return result


def interop_cases() -> dict[str, Any]:
    """Run the interop tests in a fresh pytest and read each case's outcome from its JUnit report."""
    with tempfile.TemporaryDirectory(prefix="sonic-interop-") as folder:
        report = Path(folder) / "junit.xml"
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", INTEROP_TESTS,
                              f"--junitxml={report}"], cwd=REPO, capture_output=True, text=True)
        cases = []
        for case in ET.parse(report).getroot().iter("testcase"):
            failed = any(child.tag in ("failure", "error", "skipped") for child in case)
            cases.append({"case": case.get("name"), "passed": not failed})
    return {"cases": cases, "passed": sum(c["passed"] for c in cases), "total": len(cases),
            "pytest_exit_code": run.returncode, "command": f"python -m pytest {INTEROP_TESTS}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-unet", action="store_true", help="leave unet_load_s null (it writes GBs)")
    parser.add_argument("--unet-width", type=float, default=1.0,
                        help="channel scale of the random UNet (1.0 = full size; smaller for small disks)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()
    single = single_file_vs_folder()
    print(f"single file vs folder: max relative error {single['max_rel_error']:.3g}", flush=True)
    resume_ok = download_resume()
    print(f"download resume: {resume_ok}", flush=True)
    unet = None if args.skip_unet else unet_load(args.unet_width)
    print(f"unet load: {unet}", flush=True)
    interop = interop_cases()
    print(f"interop: {interop['passed']}/{interop['total']}", flush=True)
    results = {
        "single_file_vs_folder_max_rel_error": single["max_rel_error"],
        "download_resume_ok": resume_ok,
        "unet_load_s": None if unet is None else {kind: unet[kind]["load_s"] for kind in ("pth", "safetensors")},
        "interop_cases_passed": interop["passed"],
        "interop_cases": interop["total"],
        "single_file_vs_folder": single,
        "unet_load": unet if unet is not None else {"reason": "skipped with --skip-unet"},
        "interop": interop,
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    write_results(RESULTS_DIR / "native_models.json", results, argv=[sys.argv[0], *(argv or sys.argv[1:])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
