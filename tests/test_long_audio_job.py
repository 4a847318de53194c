"""The job runner on long audio: it picks segments, and an OOM retry resumes from the finished segments."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import av
import torch
from conftest import portrait_rgb, speak

from sonic_guard.inputs.audio_loading import fit_duration, load_audio_file
from sonic_guard.job import JobEnvironment, JobRequest, model_configs_of, run_job
from sonic_guard.memory.estimator import MemoryEstimator
from sonic_guard.models.checkpoints import load_sonic_models
from sonic_guard.runs.runtime import RunHooks, StageClock
from sonic_guard.settings import GenerationSettings


class OomOnSecondSampling:
    """Raises a CUDA-style OOM when the second segment starts sampling, once; the first segment is done by then."""

    def __init__(self) -> None:
        self.sampling_starts = 0
        self.clock = StageClock()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name == "sampling":
            self.sampling_starts += 1
            if self.sampling_starts == 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
        with self.clock.stage(name):
            yield

    def stage_seconds(self) -> dict[str, float]:
        return self.clock.seconds


def test_oom_in_the_second_segment_resumes_from_the_first(tiny_models: Path, tmp_path: Path) -> None:
    models = load_sonic_models(tiny_models, with_rife=False)
    calls: list[int] = []
    models.unet.register_forward_hook(lambda module, args, output: calls.append(1))
    wav = speak(tmp_path / "speech.wav", "Hello there, this is a test of segments.")
    audio, _ = fit_duration(load_audio_file(wav), 2.1)  # 26 generated frames: 2 segments of 2 s
    observer = OomOnSecondSampling()
    events: list[str] = []
    env = JobEnvironment(
        device=torch.device("cpu"), free_memory=lambda: 64 * 2**30,
        is_oom=lambda error: isinstance(error, torch.OutOfMemoryError), release_memory=lambda: None,
        estimator=MemoryEstimator(model_configs_of(models)), hooks=RunHooks(observer=observer),
        on_event=lambda event, data: events.append(event),
    )
    request = JobRequest(
        image=portrait_rgb(), audio=audio, output_path=tmp_path / "out.mp4",
        settings=GenerationSettings(min_resolution=128, inference_steps=1, interpolation="none"),
        segment_seconds=2.0, job_dir=tmp_path / "job",
    )
    outcome = run_job(models, request, env)

    assert "oom_recovered" in events and len(outcome.report["retries"]) == 1
    assert len(calls) == 2  # one UNet window per segment: the first segment was not sampled again
    assert any("2 segments" in note and "1 reused" in note for note in outcome.report["notes"])
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == outcome.result.video.frames and abs(outcome.result.video.duration_s - 2.1) <= 1 / 12.5
    assert not (tmp_path / "job").exists()  # segment files are removed once the video is stitched

