"""bench/bench_speed.py on the CPU path: the official pipeline (from ../shared) and ours run side by side on the
small model and the official example inputs, and the results file is whole, complete and says the same work was
done on both sides."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from numerics import FLOAT32_EPS, FP32_NOISE_FACTOR

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "bench_speed.py"
HEADLINE = ("gpu", "official_available", "unet_fraction_of_peak", "speedup_vs_official", "levers_time_ratio",
            "wall_over_critical_path")
STAGES = ("sampling", "decode", "interpolation", "encode")


@pytest.fixture(scope="module")
def speed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("speed") / "speed.json"
    run = subprocess.run([sys.executable, str(BENCH), "--cpu", "--out", str(out)], cwd=REPO, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(out.read_text())


def test_results_file_is_whole_with_every_headline_key(speed: dict) -> None:
    assert set(speed["provenance"]) >= {"command", "date_utc", "versions", "machine", "commit"}
    assert "bench/bench_speed.py --cpu" in speed["provenance"]["command"]
    for key in HEADLINE:
        assert key in speed, key
    assert speed["complete"] is True and speed["gpu"] is None and speed["device"] == "cpu" and speed["gpu_reason"]
    # what only means something on a GPU is null, each with its reason
    for key in ("unet_fraction_of_peak", "levers_time_ratio"):
        assert speed[key] is None and speed["not_measured"][key]
    row = speed["by_resolution"]["128"]
    assert speed["speedup_vs_official"]["128"] == pytest.approx(
        row["official"]["end_to_end_s"] / row["ours"]["end_to_end_s"], rel=1e-3)
    assert speed["wall_over_critical_path"]["128"] >= 1.0  # the wall can never be shorter than its critical path


def test_the_official_side_really_ran(speed: dict) -> None:
    assert speed["official_available"] is True and speed["official_skipped_reason"] is None
    row = speed["by_resolution"]["128"]
    official, ours = row["official"], row["ours"]
    assert official["generated_frames"] == ours["generated_frames"] == 25  # 2 s at 12.5 fps
    # one 3-branch UNet call per window and step, counted by a hook on the official UNet module itself
    assert official["unet"]["calls"] == official["unet"]["windows"] == speed["settings"]["inference_steps"]
    assert official["unet"]["branches_per_call"] == [3]
    assert official["unet"]["flops_per_window"] > 0 and official["unet"]["achieved_tflops"] > 0
    for side in (official, ours):
        assert all(side["stage_seconds"][stage] > 0 for stage in STAGES), side["stage_seconds"]
        assert side["peak_memory"]["peak_bytes"] > 0 and side["seconds_per_second_of_video"] > 0
    assert official["mux_ok"] is True


def test_both_pipelines_give_the_same_latents_within_fp32_noise(speed: dict) -> None:
    outputs = speed["by_resolution"]["128"]["outputs"]
    theirs, noise = outputs["official_vs_ours"], outputs["ours_levers_vs_ours"]
    assert theirs["same_shape"] and theirs["shape"] == [25, 4, 16, 16]
    # our own fp32 noise: the same maths through other kernels (one branch per call, chunked feed-forward)
    tolerance = FP32_NOISE_FACTOR * max(noise["max_abs"], FLOAT32_EPS * noise["scale"])
    assert theirs["max_abs"] <= tolerance, (theirs, noise)
    assert outputs["official_vs_ours_levers"]["max_abs"] <= tolerance


def test_an_absent_official_folder_is_named_with_how_to_fix_it(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("speed_official", REPO / "bench" / "speed_official.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reason = module.official_missing_reason(tmp_path / "nowhere")
    assert "nowhere" in reason and "SONIC_OFFICIAL_DIR" in reason and "skipped" in reason
    assert module.official_missing_reason(REPO.parent / "shared" / "reference" / "sonic-official") is None
