"""Free-memory probes on this machine (CPU) and through a host's callable."""

from __future__ import annotations

import psutil
import pytest
import torch

from sonic_guard.memory.attention_model import device_attention_backends
from sonic_guard.memory.estimator import MemoryEstimator
from sonic_guard.memory.free_memory import probe_from_callable, torch_free_memory
from sonic_guard.memory.planner import usable_bytes
from sonic_guard.models.configs import ModelConfigs


def test_cpu_free_memory_is_host_ram_and_says_so() -> None:
    free = torch_free_memory("cpu")
    assert 0 < free.free_bytes <= psutil.virtual_memory().total == free.total_bytes
    assert free.device == "cpu" and "host RAM" in free.notes[0]


def test_host_callable_probe() -> None:
    probe = probe_from_callable(lambda: 7 * 2**30, "cuda:0", "comfy.model_management.get_free_memory")
    reading = probe()
    assert reading.free_bytes == 7 * 2**30 and reading.source.startswith("comfy")


def test_safety_margin() -> None:
    assert usable_bytes(1000) == 900
    assert usable_bytes(1000, 0.0) == 1000
    with pytest.raises(ValueError):
        usable_bytes(1000, 1.5)


def test_device_attention_backends_and_cpu_defaults() -> None:
    assert device_attention_backends("cuda", (9, 0))[0] == "flash"
    assert device_attention_backends("cuda", (7, 5)) == ("mem_efficient", "math")
    assert device_attention_backends("mps") == ("math",)
    cpu = MemoryEstimator(ModelConfigs.tiny(), device_type="cpu")
    assert cpu.block == 1 and cpu.calibration.overhead(10**9) == 0
    assert MemoryEstimator(ModelConfigs.tiny()).calibration.source.startswith("uncalibrated")


def test_device_memory_cap_is_a_no_op_off_cuda() -> None:
    from sonic_guard.memory.free_memory import device_memory_cap

    with device_memory_cap("cpu", 1024):
        assert torch.ones(4096).sum().item() == 4096  # the CPU is not capped
    with device_memory_cap("cuda", None):
        pass  # no cap asked: nothing touches CUDA (none here)
