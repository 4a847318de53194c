"""Run history: survives reopening, stays bounded, takes concurrent writers, calibrates, prints."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sonic_guard.memory.allocator_calibration import calibrate_on_device
from sonic_guard.memory.cli import main
from sonic_guard.memory.history import RunHistory
from sonic_guard.memory.report import RunReport

GIB = 1024**3


def report(i: int, raw: int = 4 * GIB, measured: int | None = None, pixel_frames: int = 0,
           unet_seconds: float = 0.0, calls: int = 0) -> RunReport:
    return RunReport(
        plan={"width": 512, "height": 512, "inference_steps": 25, "cfg_batch": 3}, predicted_peak_bytes=raw + GIB,
        raw_predicted_bytes=raw, measured_peak_bytes=measured, free_before_bytes=20 * GIB,
        levers_applied=["cfg_batch: 3→1"], downgrades=[f"min_resolution: 576→512 #{i}"], retries=i % 2,
        stage_seconds={"unet": unet_seconds}, hardware={"device_name": "Test GPU"}, unet_calls=calls,
        unet_pixel_frames=pixel_frames,
    )


def test_history_survives_reopening_and_keeps_fields(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "history.sqlite"
    RunHistory(path).record(report(1, measured=5 * GIB))
    reopened = RunHistory(path)
    (run,) = reopened.recent(5)
    assert run.measured_peak_bytes == 5 * GIB and run.downgrades == ["min_resolution: 576→512 #1"]
    assert run.hardware == {"device_name": "Test GPU"} and run.retries == 1


def test_history_is_bounded(tmp_path: Path) -> None:
    history = RunHistory(tmp_path / "h.sqlite", max_runs=5)
    for i in range(12):
        history.record(report(i))
    assert history.count() == 5
    assert [r.downgrades[0].split("#")[1] for r in history.recent(10)] == ["11", "10", "9", "8", "7"]


def test_concurrent_writers_from_two_threads(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    RunHistory(path, max_runs=100)
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            history = RunHistory(path, max_runs=100)
            for i in range(25):
                history.record(report(offset + i))
        except BaseException as error:  # collected and re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(k * 1000,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert RunHistory(path).count() == 50


def test_calibration_and_time_model_fit_recorded_runs(tmp_path: Path) -> None:
    history = RunHistory(tmp_path / "h.sqlite")
    assert history.calibration().source == "uncalibrated"
    assert history.time_model().source == "uncalibrated"
    # measured = 3 GiB of weights + 300 MiB + 1.05 x the simulated activations, at three sizes
    weights = 3 * GIB
    for activations in (2 * GIB, 6 * GIB, 12 * GIB):
        run = report(0, raw=weights + activations, measured=int(weights + 300 * 2**20 + 1.05 * activations))
        history.record(dataclasses.replace(run, raw_weight_bytes=weights, outcome="calibration"))
    # An ordinary run's reserved peak (what the allocator kept, not what it needed) does not move the fit.
    history.record(report(0, raw=weights + 2 * GIB, measured=weights + 8 * GIB))
    calibration = history.calibration()
    assert abs(calibration.fixed_bytes - 300 * 2**20) < 2**20
    assert abs(calibration.fragmentation - 0.05) < 1e-3
    assert "3 runs" in calibration.source
    for pixels in (10**7, 4 * 10**7):
        history.record(report(0, pixel_frames=pixels, unet_seconds=100 * (0.2 + 5e-8 * pixels), calls=100))
    times = history.time_model()
    assert abs(times.per_pixel_frame_s - 5e-8) < 1e-10 and abs(times.per_call_s - 0.2) < 1e-6
    assert history.calibration(device="Other GPU").source == "uncalibrated"


def test_cli_prints_history(tmp_path: Path, capsys) -> None:
    path = tmp_path / "h.sqlite"
    RunHistory(path).record(report(3, measured=5 * GIB))
    assert main(["--db", str(path)]) == 0
    text = capsys.readouterr().out
    assert "512x512" in text and "cfg_batch: 3→1" in text and "1 runs stored" in text
    assert main(["--db", str(tmp_path / "missing.sqlite")]) == 2
    completed = subprocess.run([sys.executable, "-m", "sonic_guard.memory.cli", "--db", str(path), "--json"],
                               capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    assert '"measured_peak_bytes": 5368709120' in completed.stdout


def test_device_calibration_refuses_without_cuda(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        calibrate_on_device(RunHistory(tmp_path / "h.sqlite"), "cpu")


def test_calibration_fit_without_a_usable_line_covers_every_run() -> None:
    from sonic_guard.memory.fitted_corrections import AllocatorCalibration

    # needed/activation falls with size (cudaMallocAsync on an H100): no line with slope >= 1 fits
    samples = [(int(a * GIB), int(n * GIB)) for a, n in ((0.92, 0.985), (2.15, 2.24), (3.88, 3.92))]
    fitted = AllocatorCalibration.fit(samples)
    assert "proportional only" in fitted.source
    for activations, needed in samples:
        assert fitted.overhead(activations) + activations >= needed
