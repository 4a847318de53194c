"""One video on several CPU ranks (gloo): every rank denoises its round-robin windows, and the latents equal the
single-process run bit for bit; a killed rank fails the run with RankFailedError and no process is left."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import torch
from conftest import portrait_rgb

from sonic_guard.conditioning.reference_image import prepare_reference
from sonic_guard.errors import BadInputError
from sonic_guard.face.choose_detector import make_face_detector
from sonic_guard.inputs.audio_loading import fit_duration, load_audio_file
from sonic_guard.memory.plan import ExecutionPlan
from sonic_guard.models.checkpoints import SonicModelSet, load_sonic_models
from sonic_guard.runs.pipeline import clip_conditioning, default_placer, prepare_clip, sample_clip, windows_per_step
from sonic_guard.runs.runtime import RunHooks
from sonic_guard.sampling.denoiser import ClipConditioning
from sonic_guard.sampling.multi_device.devices import check_devices_present, parse_devices
from sonic_guard.sampling.multi_device.launcher import RankFailedError, default_threads_per_rank, sample_on_devices
from sonic_guard.sampling.multi_device.payload import RankJob
from sonic_guard.settings import GenerationSettings

STEPS = 2
SEED = 11
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models(tiny_models: Path) -> SonicModelSet:
    return load_sonic_models(tiny_models, with_rife=False)


@pytest.fixture(scope="module")
def run_inputs(models: SonicModelSet, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[ClipConditioning, GenerationSettings, ExecutionPlan]:
    """A real clip of 65 frames: 3 windows per step, the last one wrapping onto the first (overlaps)."""
    from conftest import speak

    audio = fit_duration(load_audio_file(speak(tmp_path_factory.mktemp("speech") / "s.wav")), 5.2)[0]
    settings = GenerationSettings(min_resolution=128, inference_steps=STEPS, interpolation="none", seed=SEED)
    reference = prepare_reference(portrait_rgb(), min_resolution=128, detector=make_face_detector(None))
    height, width = reference.reference.shape[-2:]
    plan = ExecutionPlan(min_resolution=128, width=int(width), height=int(height), inference_steps=STEPS,
                         dtype="float32")
    inputs = prepare_clip(models, reference, audio, settings, plan, default_placer(CPU, plan), CPU, RunHooks())
    conditioning = clip_conditioning(inputs, reference)
    assert conditioning.num_frames % 25 and windows_per_step(conditioning.num_frames) == 3
    return conditioning, settings, plan


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Match the workers' thread count: CPU kernels may split reductions differently with more threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def single_process(models: SonicModelSet, run_inputs, threads: int) -> torch.Tensor:
    conditioning, settings, plan = run_inputs
    with torch_threads(threads):
        return sample_clip(models, conditioning, settings, plan, default_placer(CPU, plan), CPU, RunHooks(),
                           seed=SEED, on_window=lambda done, total: None)


def rank_job(models: SonicModelSet, run_inputs, ranks: int, timeout_s: float = 120.0) -> RankJob:
    conditioning, settings, plan = run_inputs
    return RankJob(model_paths=models.paths, conditioning=conditioning, settings=settings, plan=plan, seed=SEED,
                   anchor_latents=None, devices=("cpu",) * ranks, threads_per_rank=1, timeout_s=timeout_s)


def live_workers() -> list[psutil.Process]:
    """Rank worker processes started by this process and still alive."""
    workers = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # it may exit while we look: then it is gone, as wanted
            command = " ".join(child.cmdline())
            if "sonic_guard.sampling.multi_device.worker" in command and child.status() != psutil.STATUS_ZOMBIE:
                workers.append(child)
    return workers


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_equal_the_single_process_bit_for_bit(models, run_inputs, ranks: int) -> None:
    want = single_process(models, run_inputs, threads=1)
    progress: list[tuple[int, int]] = []
    got = sample_on_devices(rank_job(models, run_inputs, ranks), lambda done, total: progress.append((done, total)))
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.equal(got, want), (got - want).abs().max()
    total = STEPS * 3
    assert progress == [(done, total) for done in range(1, total + 1)]  # every window, in order, from rank 0
    assert live_workers() == []


def test_devices_setting_routes_sample_clip_through_the_ranks(models, run_inputs) -> None:
    conditioning, settings, plan = run_inputs
    want = single_process(models, run_inputs, threads=default_threads_per_rank(2))
    spread = GenerationSettings(**{**settings.to_dict(), "devices": "cpu, cpu"})
    # a placer that refuses to run anything proves the parent did not sample itself
    got = sample_clip(models, conditioning, spread, plan, RefusingPlacer(), CPU, RunHooks(), seed=SEED,
                      on_window=lambda done, total: None)
    assert torch.equal(got, want)
    # a different seed is a different video: the ranks really used the settings they were given
    other = sample_on_devices(replace(rank_job(models, run_inputs, 2), seed=SEED + 1), lambda done, total: None)
    assert not torch.allclose(other, want)


class RefusingPlacer:
    def place(self, name: str, module: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        raise AssertionError(f"the parent placed {name}: it should have left sampling to the workers")


def test_a_killed_rank_fails_the_run_and_every_worker_is_reaped(models, run_inputs) -> None:
    killed: list[int] = []

    def kill_one(done: int, total: int) -> None:
        if killed:
            return
        workers = live_workers()
        assert len(workers) == 3
        victim = workers[-1]
        killed.append(victim.pid)
        os.kill(victim.pid, signal.SIGKILL)

    started = time.monotonic()
    with pytest.raises(RankFailedError, match="killed by signal 9") as caught:
        sample_on_devices(rank_job(models, run_inputs, 3, timeout_s=60.0), kill_one)
    elapsed = time.monotonic() - started
    assert killed, "the run ended before a worker could be killed"
    assert "Fix:" in str(caught.value) and "devices" in str(caught.value)
    assert elapsed < 60.0, f"the failure took {elapsed:.1f} s to surface"
    assert live_workers() == []
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE


class Cancelled(Exception):
    pass


def test_a_cancel_in_the_parent_stops_every_worker(models, run_inputs) -> None:
    def cancel(done: int, total: int) -> None:
        raise Cancelled("user pressed cancel")

    with pytest.raises(Cancelled):
        sample_on_devices(rank_job(models, run_inputs, 2), cancel)
    assert live_workers() == []


@pytest.mark.parametrize("text", ["gpu0", "cpu", "cpu,cuda:0", "cuda:0,cuda:0", "cuda0,cuda1", "cpu,,cpu"])
def test_bad_device_lists_are_refused_with_the_fix(text: str) -> None:
    with pytest.raises(BadInputError, match="Fix:"):
        GenerationSettings(devices=text)


def test_device_lists_parse() -> None:
    assert parse_devices("") == () and parse_devices("  ") == ()
    assert parse_devices("cuda:0, cuda:1") == ("cuda:0", "cuda:1")
    assert parse_devices("cpu,cpu,cpu") == ("cpu",) * 3
    assert "devices" not in GenerationSettings().to_dict()  # single-device fingerprints are unchanged
    assert GenerationSettings(devices="cpu,cpu").to_dict()["devices"] == "cpu,cpu"


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() >= 8, reason="machine has 8 GPUs")
def test_missing_gpus_are_refused_at_queue_time() -> None:
    with pytest.raises(BadInputError, match="cuda:7"):
        check_devices_present(parse_devices("cuda:0,cuda:7"))
