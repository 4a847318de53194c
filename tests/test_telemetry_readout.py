"""GPU memory readout: truthful on this machine (no NVIDIA GPU), and correct when given device figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sonic_guard.telemetry import GpuReadout, NvmlDevice, TorchDevice, format_table, read_gpu_memory
from sonic_guard.telemetry.device_snapshot import _host_from_proc, match_by_uuid, read_host_memory
from sonic_guard.telemetry.nvml import _text, read_nvml, uuid_key

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3


def _nvml_init_error() -> str | None:
    """The class name of the error NVML really raises here, or None when NVML works."""
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return type(exc).__name__
    pynvml.nvmlShutdown()
    return None


def test_readout_is_truthful_on_this_machine() -> None:
    error = _nvml_init_error()
    readout = read_gpu_memory()
    if error is None:
        pytest.skip("this machine has a working NVIDIA driver; the no-GPU path cannot be checked here")
    assert not readout.has_nvidia_gpu and readout.nvml_devices == []
    expected = {
        "NVMLError_LibraryNotFound": "no NVIDIA driver library",
        "NVMLError_DriverNotLoaded": "driver is not loaded",
    }.get(error, error)
    assert expected in readout.nvml_status
    assert readout.status.startswith("no NVIDIA GPU readout: ")
    import torch

    if not torch.cuda.is_available():
        assert readout.torch_devices == [] and "torch.cuda is not available" in readout.torch_status
    numbers = readout.key_numbers()
    assert numbers["gpu_count"] == 0 and numbers["gpu_free_bytes"] is None
    assert numbers["torch_allocated_bytes"] is None
    json.dumps(numbers)  # node outputs and websocket events carry these


def test_host_ram_figures_are_present_and_agree_with_the_kernel() -> None:
    host = read_host_memory()
    proc = _host_from_proc()
    assert host.total_bytes and host.available_bytes and host.process_rss_bytes
    assert 0 < host.available_bytes <= host.total_bytes
    assert host.process_rss_bytes > 10 * 2**20  # this Python process with pytest loaded
    if proc.total_bytes is not None:
        assert abs(proc.total_bytes - host.total_bytes) < 2**20
        assert abs(proc.available_bytes - host.available_bytes) < host.total_bytes * 0.1


def test_table_on_this_machine_names_the_reason_and_host_ram() -> None:
    readout = read_gpu_memory()
    table = format_table(readout)
    assert table.splitlines()[0].startswith("GPU memory readout: ")
    assert "Host RAM" in table and "available" in table and "this process (RSS)" in table
    if not readout.has_nvidia_gpu:
        assert f"NVIDIA devices: none ({readout.nvml_status})" in table
    assert "NVML used = whole device" in table  # the three GPU figures are explained


def test_missing_nvidia_ml_py_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    reading = read_nvml()
    assert reading.devices == [] and "nvidia-ml-py is not installed" in reading.status


def test_uuid_matching_between_nvml_and_torch_forms() -> None:
    assert uuid_key("GPU-5B3A1C2D-0000-1111-2222-333344445555") == "5b3a1c2d-0000-1111-2222-333344445555"
    assert uuid_key("5b3a1c2d-0000-1111-2222-333344445555") == uuid_key("GPU-5b3a1c2d-0000-1111-2222-333344445555")
    assert uuid_key(None) == "" and uuid_key("") == ""
    assert _text(b"NVIDIA H100 80GB HBM3") == "NVIDIA H100 80GB HBM3" and _text("A100") == "A100"


def _device(index: int, uuid: str, used_gib: float) -> NvmlDevice:
    return NvmlDevice(
        index=index,
        name=f"NVIDIA Test {index}",
        uuid=uuid,
        memory_total_bytes=80 * GIB,
        memory_used_bytes=int(used_gib * GIB),
        memory_free_bytes=int((80 - used_gib) * GIB),
        utilization_gpu_percent=37,
        utilization_memory_percent=12,
        temperature_c=55,
        power_w=212.5,
        process_used_bytes=int(used_gib * GIB) - GIB,
    )


def test_table_and_numbers_with_devices() -> None:
    nvml = [_device(0, "GPU-aaaa", 10.0), _device(1, "GPU-bbbb", 30.0)]
    # torch enumerates in another order (e.g. CUDA_VISIBLE_DEVICES=1,0): cuda:0 is NVML device 1.
    torch_devices = [
        TorchDevice(0, "NVIDIA Test 1", "BBBB", 20 * GIB, 28 * GIB, 25 * GIB, 50 * GIB, 80 * GIB),
        TorchDevice(1, "NVIDIA Test 0", "aaaa", 1 * GIB, 8 * GIB, 3 * GIB, None, None),
        TorchDevice(2, "Other", "cccc", 0, 0, 0, None, None),
    ]
    matched, notes = match_by_uuid(torch_devices, nvml)
    assert [d.nvml_index for d in matched] == [1, 0, None]
    assert notes == ["torch cuda:2 has no NVML device with the same UUID"]
    readout = GpuReadout(nvml, matched[:2], read_host_memory(), "ok", "ok", driver_version="580.1")
    table = format_table(readout)
    assert "2 NVIDIA GPU(s) read through NVML" in readout.status
    assert "NVIDIA driver 580.1" in table and "NVIDIA Test 1" in table
    assert "70.00 GiB" in table and "37%" in table and "55 C" in table and "212 W" in table
    assert "28.00 GiB" in table and "25.00 GiB" in table  # reserved and peak of cuda:0
    torch_rows = table.split("torch CUDA allocator (this process)")[1].splitlines()[3:5]
    assert torch_rows[0].split()[:2] == ["0", "1"] and torch_rows[1].split()[:2] == ["1", "0"]
    numbers = readout.key_numbers()
    assert numbers["gpu_count"] == 2 and numbers["gpu_free_bytes"] == 70 * GIB
    assert numbers["torch_allocated_bytes"] == 21 * GIB and numbers["torch_reserved_bytes"] == 36 * GIB


def test_core_imports_without_comfyui_torch_or_nvml() -> None:
    code = (
        "import sys, sonic_guard.telemetry as t\n"
        "heavy = ('comfy', 'folder_paths', 'server', 'torch', 'pynvml', 'pyroscope')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "print(bad)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
