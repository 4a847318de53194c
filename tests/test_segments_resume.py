"""Segments: the plan covers the clip, an interrupted job resumes, the stitched file equals a clean run."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from scipy.io import wavfile

from sonic_guard.errors import BadInputError
from sonic_guard.runs.segments import (
    MANIFEST_VERSION,
    Segment,
    SegmentJob,
    SegmentOutput,
    job_fingerprint,
    plan_segments,
    stitch_videos,
    tensor_sha256,
)
from sonic_guard.video.interpolate import interpolate_stream
from sonic_guard.video.writer import StreamingVideoWriter

SIZE = 32
MODE = "blend"


@pytest.mark.parametrize("limit,context", [(25, 5), (10, 3), (7, 1), (40, 8)])
def test_plan_covers_every_frame_once_within_the_limit(limit: int, context: int) -> None:
    for frames in range(1, 160, 7):
        plan = plan_segments(frames, limit, context)
        assert plan[0].start == 0 and plan[-1].stop == frames and plan[-1].is_last
        assert all(not segment.is_last for segment in plan[:-1])
        for before, after in zip(plan, plan[1:]):
            assert before.stop == after.start
            assert 1 <= after.context_frames <= context
            assert after.context_start >= before.start  # anchors come from the previous segment alone
        for segment in plan:
            assert 0 < segment.stop - segment.start and segment.stop - segment.context_start <= limit
            low, high = segment.decode_range(MODE)
            assert segment.context_start <= low and high == segment.stop
        assert sum(segment.output_frames(MODE) for segment in plan) == 2 * frames - 1
        assert sum(segment.output_frames("none") for segment in plan) == frames
    assert len(plan_segments(100, 25, 5)) == 5  # as few segments as fit: 25 + 4 x 20 >= 100
    with pytest.raises(BadInputError):
        plan_segments(100, 25, 0)
    with pytest.raises(BadInputError):
        plan_segments(0, 25, 5)


def _fake_latents(segment: Segment, anchor: torch.Tensor | None) -> torch.Tensor:
    """Stands in for the sampler: deterministic per frame, the overlap initialised from the anchor."""
    index = torch.arange(segment.context_start, segment.stop, dtype=torch.float32)
    latents = torch.sin(index[:, None, None, None] * 0.37 + torch.arange(4.0)[None, :, None, None]).expand(
        -1, 4, 4, 4
    ).clone()
    if anchor is not None:
        latents[: segment.context_frames] = anchor[-segment.context_frames :]
        latents += 0.05 * float(anchor.mean())  # the anchor steers the whole segment, as in the real run
    return latents


def _render(calls: list[int]):
    def render(segment: Segment, anchor: torch.Tensor | None, path: Path) -> SegmentOutput:
        calls.append(segment.index)
        latents = _fake_latents(segment, anchor)
        low, high = segment.decode_range(MODE)
        decoded = (
            (latents[i - segment.context_start, :3] * 0.5 + 0.5).repeat_interleave(SIZE // 4, -1)
            .repeat_interleave(SIZE // 4, -2) for i in range(low, high)
        )
        frames = islice(interpolate_stream(decoded, MODE), segment.drop_leading(MODE), None)
        with StreamingVideoWriter(path, SIZE, SIZE, 25, preset="ultrafast") as writer:
            for frame in frames:
                writer.write(frame)
        info = writer.close()
        assert info.frames == segment.output_frames(MODE)
        return SegmentOutput(info=info, tail_latents=latents[-3:])

    return render


class Interrupted(RuntimeError):
    pass


def _stop_after(count: int):
    def on_segment(done: int, total: int) -> None:
        if done == count:
            raise Interrupted

    return on_segment


def _decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_interrupted_job_resumes_and_matches_a_clean_run(tmp_path: Path, speech_wav: Path) -> None:
    rate, samples = wavfile.read(speech_wav)
    audio = (samples.astype(np.float32) / 32768.0, rate)
    generated = 39
    plan = plan_segments(generated, 12, 3)
    assert len(plan) == 4
    fingerprint = job_fingerprint({"audio": tensor_sha256(torch.from_numpy(audio[0]))}, {"mode": MODE})

    clean_calls: list[int] = []
    clean = SegmentJob(tmp_path / "clean", fingerprint, plan)
    clean_info = stitch_videos(clean.run(_render(clean_calls)), tmp_path / "clean.mp4", audio)
    assert clean_calls == [0, 1, 2, 3]
    assert clean_info.frames == 2 * generated - 1 and clean_info.has_audio

    calls: list[int] = []
    with pytest.raises(Interrupted):
        SegmentJob(tmp_path / "job", fingerprint, plan).run(_render(calls), on_segment=_stop_after(2))
    assert calls == [0, 1]
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert sorted(manifest["done"]) == ["0", "1"]
    assert not list((tmp_path / "job").glob("*.tmp"))  # atomic writes leave no temporaries

    resumed = SegmentJob(tmp_path / "job", fingerprint, plan)
    assert resumed.is_done(0) and resumed.is_done(1) and not resumed.is_done(2)
    info = stitch_videos(resumed.run(_render(calls)), tmp_path / "resumed.mp4", audio)
    assert calls == [0, 1, 2, 3]  # segments 1-2 were reused, not regenerated
    assert info.frames == clean_info.frames
    clean_frames, resumed_frames = _decoded(tmp_path / "clean.mp4"), _decoded(tmp_path / "resumed.mp4")
    assert len(clean_frames) == len(resumed_frames) == 2 * generated - 1
    assert all(np.array_equal(a, b) for a, b in zip(clean_frames, resumed_frames))
    with av.open(str(tmp_path / "resumed.mp4")) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        audio_s = float(container.streams.audio[0].duration * container.streams.audio[0].time_base)
    assert abs(audio_s - info.duration_s) <= 1 / 25


def test_a_different_fingerprint_starts_fresh(tmp_path: Path) -> None:
    plan = plan_segments(30, 12, 3)
    calls: list[int] = []
    with pytest.raises(Interrupted):
        SegmentJob(tmp_path, "settings-a", plan).run(_render(calls), on_segment=_stop_after(1))
    assert calls == [0]
    fresh = SegmentJob(tmp_path, "settings-b", plan)
    assert not fresh.is_done(0) and not (tmp_path / "segment_000.mp4").exists()
    fresh.run(_render(calls))
    assert calls == [0, 0, 1, 2]
    # An unfinished render leaves nothing: its .partial file is removed.
    def failing(segment: Segment, anchor: torch.Tensor | None, path: Path) -> SegmentOutput:
        path.write_bytes(b"half a file")
        raise Interrupted

    job = SegmentJob(tmp_path, "settings-c", plan)
    with pytest.raises(Interrupted):
        job.run(failing)
    assert not job.is_done(0) and not (tmp_path / "segment_000.mp4").exists()
    assert not list(tmp_path.glob("*.partial*"))


def test_stitch_rejects_mismatched_segments(tmp_path: Path) -> None:
    for name, fps in (("a.mp4", 25), ("b.mp4", 12.5)):
        with StreamingVideoWriter(tmp_path / name, SIZE, SIZE, fps, preset="ultrafast") as writer:
            writer.write(np.zeros((SIZE, SIZE, 3), np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        stitch_videos([tmp_path / "a.mp4", tmp_path / "b.mp4"], tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob("*.partial*"))


def _interrupted_job(job_dir: Path, plan: list[Segment], after: int) -> None:
    with pytest.raises(Interrupted):
        SegmentJob(job_dir, "settings", plan).run(_render([]), on_segment=_stop_after(after))


def test_a_damaged_segment_is_redone_with_every_segment_after_it(tmp_path: Path) -> None:
    plan = plan_segments(39, 12, 3)
    _interrupted_job(tmp_path, plan, after=3)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["version"] == MANIFEST_VERSION
    record = manifest["done"]["1"]["video"]
    assert record["name"] == "segment_001.mp4" and len(record["sha256"]) == 64
    assert record["size"] == (tmp_path / "segment_001.mp4").stat().st_size
    # One flipped byte in the middle of segment 2's video: same size, another hash.
    damaged = tmp_path / "segment_001.mp4"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))

    calls: list[int] = []
    job = SegmentJob(tmp_path, "settings", plan)
    assert job.is_done(0) and not job.is_done(1) and not job.is_done(2)
    assert len(job.notes) == 1 and "segment 2/4 redone" in job.notes[0] and "sha256" in job.notes[0]
    assert "1 finished segment(s) after it" in job.notes[0]
    assert not (tmp_path / "segment_002.mp4").exists()  # the later segment's files go with it
    job.run(_render(calls))
    assert calls == [1, 2, 3]
    # The result is the clean run's, frame for frame.
    clean = SegmentJob(tmp_path / "clean", "settings", plan)
    clean_paths = clean.run(_render([]))
    resumed_paths = [job.video_path(segment.index) for segment in plan]
    stitched = stitch_videos(resumed_paths, tmp_path / "out.mp4")
    reference = stitch_videos(clean_paths, tmp_path / "clean.mp4")
    assert stitched.frames == reference.frames == 2 * 39 - 1
    assert all(np.array_equal(a, b) for a, b in zip(_decoded(tmp_path / "out.mp4"), _decoded(tmp_path / "clean.mp4")))


def test_a_truncated_tail_or_a_missing_video_is_redone(tmp_path: Path) -> None:
    plan = plan_segments(39, 12, 3)
    _interrupted_job(tmp_path, plan, after=2)
    tail = tmp_path / "segment_001_tail.pt"
    tail.write_bytes(tail.read_bytes()[: tail.stat().st_size // 2])
    job = SegmentJob(tmp_path, "settings", plan)
    assert job.is_done(0) and not job.is_done(1)
    assert "segment_001_tail.pt is" in job.notes[0] and "bytes" in job.notes[0], job.notes
    # The dropped record is gone from the manifest at once: a crash before the redo cannot trust it again.
    assert sorted(json.loads((tmp_path / "manifest.json").read_text())["done"]) == ["0"]
    calls: list[int] = []
    job.run(_render(calls))
    assert calls == [1, 2, 3]

    (tmp_path / "segment_000.mp4").unlink()
    job = SegmentJob(tmp_path, "settings", plan)
    assert not any(job.is_done(segment.index) for segment in plan)
    assert "segment_000.mp4 is missing" in job.notes[0]


def test_leftovers_of_a_crash_are_removed_on_start(tmp_path: Path) -> None:
    plan = plan_segments(39, 12, 3)
    _interrupted_job(tmp_path, plan, after=1)
    # What kill -9 can leave: a half-written segment, temporaries, and a finished file whose manifest entry was
    # never written (the manifest is the commit point).
    leftovers = ["segment_001.partial.mp4", "segment_001_tail.pt.tmp", "manifest.json.tmp", "segment_001.mp4",
                 "segment_001_last.pt", "segment_000_last.pt.tmp"]
    for name in leftovers:
        (tmp_path / name).write_bytes(b"half a file")
    job = SegmentJob(tmp_path, "settings", plan)
    assert job.is_done(0) and not job.is_done(1) and not job.notes
    assert not [name for name in leftovers if (tmp_path / name).exists()]
    assert (tmp_path / "segment_000.mp4").is_file() and (tmp_path / "segment_000_tail.pt").is_file()


def test_an_old_version_manifest_starts_over(tmp_path: Path) -> None:
    plan = plan_segments(39, 12, 3)
    _interrupted_job(tmp_path, plan, after=2)
    manifest_path = tmp_path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = 1  # what the previous release wrote: no hashes to verify
    manifest["done"] = {key: {"frames": value["frames"], "tail": value["tail"]["name"]}
                        for key, value in manifest["done"].items()}
    manifest_path.write_text(json.dumps(manifest))
    job = SegmentJob(tmp_path, "settings", plan)
    assert not job.is_done(0) and not list(tmp_path.glob("segment_*"))
    assert json.loads(manifest_path.read_text())["version"] == MANIFEST_VERSION
    calls: list[int] = []
    job.run(_render(calls))
    assert calls == [0, 1, 2, 3]
