"""SONIC_GUARD_FREE_MEMORY_BYTES per device: "cuda:1=6GiB,8GiB" caps cuda:1 at 6 GiB and the rest at 8 GiB, a kind
("cuda=...") caps every device of that kind, and bad text is refused with what was wrong and how to fix it."""

from __future__ import annotations

import pytest
import torch

from sonic_guard.errors import BadInputError
from sonic_guard.memory.free_memory import planned_free_bytes, torch_free_memory
from sonic_guard.memory.free_memory_cap import (
    ENV_VAR,
    capped_free_memory,
    free_memory_cap,
    parse_free_memory_caps,
)
from sonic_guard.sampling.multi_device.devices import free_bytes_by_device

GIB = 1024**3


def env(text: str) -> dict[str, str]:
    return {ENV_VAR: text}


def test_a_plain_amount_caps_every_device_as_before() -> None:
    for device in (None, "cpu", "cuda:0", "cuda:3", "cpu:1"):
        assert free_memory_cap(env("6GiB"), device) == 6 * GIB
    assert free_memory_cap({}, "cuda:0") is None and free_memory_cap(env("  "), "cuda:0") is None


def test_a_device_entry_wins_over_its_kind_and_the_default() -> None:
    caps = env("cuda:1=6GiB, cuda=7GiB, 8GiB")
    assert free_memory_cap(caps, "cuda:1") == 6 * GIB
    assert free_memory_cap(caps, torch.device("cuda", 0)) == 7 * GIB  # every other GPU: the kind's entry
    assert free_memory_cap(caps, "cpu") == 8 * GIB and free_memory_cap(caps, None) == 8 * GIB
    only_one = env("cuda:1=6GiB")
    assert free_memory_cap(only_one, "cuda:0") is None and free_memory_cap(only_one, None) is None
    # a capped device is lowered, less what models already hold there; an uncapped one is left as measured
    assert capped_free_memory(20 * GIB, only_one, loaded_bytes=GIB, device="cuda:1") == 5 * GIB
    assert capped_free_memory(20 * GIB, only_one, loaded_bytes=GIB, device="cuda:0") == 20 * GIB


def test_cpu_ranks_are_told_apart_by_their_index() -> None:
    caps = env("cpu:1=512MiB")
    assert planned_free_bytes("cpu:1", caps) == min(512 * 1024**2, torch_free_memory("cpu").free_bytes)
    ram = torch_free_memory("cpu").free_bytes
    assert ram > 512 * 1024**2, "this check needs more available RAM than the cap"
    assert planned_free_bytes("cpu:0", caps) > 512 * 1024**2  # uncapped: the available RAM
    assert parse_free_memory_caps("cpu=1GiB").for_device("cpu:1") == GIB  # the kind covers indexed CPU ranks


@pytest.mark.parametrize(("text", "words"), [
    ("cuda:1=6GiB,,8GiB", "empty entry"),
    ("6GiB,8GiB", "two caps for every device"),
    ("gpu1=6GiB", "'gpu1', which is not a device"),
    ("cuda:1=6GiB,cuda:1=5GiB", "caps cuda:1 twice"),
    ("cuda:1=lots", "entry 'cuda:1=lots' is not an amount"),
    ("cuda:1=0", "entry 'cuda:1=0' is zero"),
    ("lots", "'lots' is not an amount"),
])
def test_bad_caps_are_refused_with_the_fix(text: str, words: str) -> None:
    with pytest.raises(BadInputError) as caught:
        free_memory_cap(env(text), "cuda:1")
    message = str(caught.value)
    assert words in message and ENV_VAR in message and "Expected:" in message and "Fix:" in message, message


def test_the_parent_plans_for_the_tightest_listed_device() -> None:
    asked: list[str] = []

    def free_on(name: str) -> int:
        asked.append(name)
        return {"cuda:1": 5 * GIB, "cuda:2": 9 * GIB}[name]

    figures = free_bytes_by_device(torch.device("cuda", 0), 12 * GIB, ("cuda:0", "cuda:1", "cuda:2"), free_on)
    # the server's own device keeps its room (free + what ComfyUI can evict); the others are measured
    assert figures == {"cuda:0": 12 * GIB, "cuda:1": 5 * GIB, "cuda:2": 9 * GIB} and asked == ["cuda:1", "cuda:2"]
    assert min(figures.values()) == 5 * GIB
    assert free_bytes_by_device(torch.device("cpu"), GIB, ("cpu", "cpu"), free_on) == {"cpu": GIB}
