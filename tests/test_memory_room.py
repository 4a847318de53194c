"""Room on the device: free + evictable within the cap, what each stage asks ComfyUI for, evictions found."""

from __future__ import annotations

import pytest

from sonic_guard.errors import BadInputError
from sonic_guard.memory.estimator import MemoryEstimator
from sonic_guard.memory.fitted_corrections import AllocatorCalibration
from sonic_guard.memory.free_memory_cap import capped_free_memory
from sonic_guard.memory.plan import RunRequest
from sonic_guard.memory.room import (
    DeviceRoom,
    Eviction,
    HeldModel,
    device_room,
    evictions_between,
    stage_activation_bytes,
    stage_room_bytes,
)
from sonic_guard.models.configs import ModelConfigs

GIB = 2**30
HELD = [HeldModel(1, "Upscaler", 3 * GIB), HeldModel(2, "SonicUNet", 1 * GIB, ours=True)]


def test_a_gpu_counts_every_held_model_as_evictable() -> None:
    room = device_room(2 * GIB, HELD, device_type="cuda")
    assert room.plannable_bytes == 6 * GIB
    assert room.evictable_models == ("Upscaler",)  # ours are counted, not named as others
    assert "2.00 GiB free + 4.00 GiB that ComfyUI can evict (Upscaler)" in room.note()


def test_the_cpu_has_nothing_to_evict_without_a_cap() -> None:
    room = device_room(20 * GIB, HELD, device_type="cpu")
    assert room == DeviceRoom(20 * GIB, 0) and room.note() is None


def test_under_a_cap_free_and_evicted_never_exceed_it() -> None:
    cap = 5 * GIB
    free = capped_free_memory(64 * GIB, {"SONIC_GUARD_FREE_MEMORY_BYTES": str(cap)}, loaded_bytes=4 * GIB)
    assert free == 1 * GIB
    assert device_room(free, HELD, device_type="cpu", cap_bytes=cap).plannable_bytes == cap
    # Models holding more than the cap: free is 0 and the plan still gets no more than the cap.
    over = capped_free_memory(64 * GIB, {"SONIC_GUARD_FREE_MEMORY_BYTES": "3GiB"}, loaded_bytes=4 * GIB)
    assert over == 0
    assert device_room(over, HELD, device_type="cuda", cap_bytes=3 * GIB).plannable_bytes == 3 * GIB
    # The device's own figure still wins when it is lower than the cap allows.
    assert capped_free_memory(GIB // 2, {"SONIC_GUARD_FREE_MEMORY_BYTES": "5GiB"}, loaded_bytes=GIB) == GIB // 2
    with pytest.raises(BadInputError, match="not an amount of memory"):
        capped_free_memory(GIB, {"SONIC_GUARD_FREE_MEMORY_BYTES": "lots"})


def test_evictions_are_found_whole_and_partial_and_named_as_levers() -> None:
    before = [*HELD, HeldModel(3, "TTS", 2 * GIB)]
    after = [HeldModel(2, "SonicUNet", 1 * GIB, ours=True), HeldModel(3, "TTS", GIB // 2)]
    found = evictions_between(before, after)
    assert found == [Eviction("Upscaler", 3 * GIB), Eviction("TTS", 3 * GIB // 2, partial=True)]
    assert found[0].lever == "evicted: Upscaler, 3.00 GiB"
    assert found[1].lever == "evicted: TTS, 1.50 GiB (partly)"
    assert evictions_between(before, before) == []


def test_each_model_asks_for_the_room_of_the_stages_that_use_it() -> None:
    estimator = MemoryEstimator(ModelConfigs.tiny(), AllocatorCalibration(fixed_bytes=1024, fragmentation=0.0))
    estimate = estimator.estimate(RunRequest(image_width=128, image_height=128, min_resolution=128,
                                             dtype="float32").requested_plan(), exact=True)
    unet = estimate.stages["unet_window"]
    assert stage_room_bytes(estimate, "unet") >= unet.peak_bytes + estimate.overhead_bytes
    assert stage_activation_bytes(estimate, "unet") >= unet.activation_bytes + estimate.overhead_bytes
    assert stage_room_bytes(estimate, "unet") > stage_activation_bytes(estimate, "unet")  # weights included
    assert stage_room_bytes(estimate, "vae") >= estimate.stages["vae_decode"].peak_bytes
    assert stage_room_bytes(estimate, "not_a_model") == estimate.overhead_bytes
