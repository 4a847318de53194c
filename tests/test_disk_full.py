"""A full disk while encoding: an actionable DiskFullError, no half-written file left, and the next run works.

The small disk is a real 2 MiB tmpfs (a size-limited loop-mounted ext4 file where tmpfs cannot be mounted): the
writes really fail with ENOSPC inside FFmpeg's muxer, nothing is simulated. Without either mount the tests fail
(they do not skip): the disk-full handling would otherwise go untested.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from comfy_host import ComfyServer
from hardening_cases import quick_prompt
from hardening_server import execution_error_of, run_prompt

from sonic_guard.errors import DiskFullError, SonicGuardError
from sonic_guard.runs.segments import MANIFEST_NAME, Segment, SegmentJob, SegmentOutput, plan_segments, stitch_videos
from sonic_guard.video.writer import StreamingVideoWriter, is_disk_full

SIZE = 128
DISK_BYTES = 2 * 2**20


class SmallDiskError(RuntimeError):
    """Neither a tmpfs nor a loop file could be mounted: the disk-full scenarios cannot run here."""


def mount_small_disk(target: Path, size_bytes: int = DISK_BYTES) -> str:
    """Mount a `size_bytes` file system on `target` (made here): "tmpfs", else "loop" (an ext4 image file)."""
    target.mkdir(parents=True)
    tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(target)],
                           capture_output=True, text=True)
    if tmpfs.returncode == 0:
        return "tmpfs"
    image = target.with_suffix(".img")
    with open(image, "wb") as handle:
        handle.truncate(4 * size_bytes)  # ext4's own metadata takes part of a tiny image
    steps = [["mkfs.ext4", "-q", "-F", str(image)], ["mount", "-o", "loop", str(image), str(target)]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            raise SmallDiskError(
                f"cannot make a small disk for the disk-full scenario: `mount -t tmpfs` said "
                f"{tmpfs.stderr.strip()!r} and `{' '.join(step)}` said {done.stderr.strip()!r}. Run as root (or "
                "with CAP_SYS_ADMIN) so a tmpfs or a loop file can be mounted")
    return "loop"


def unmount_small_disk(target: Path) -> None:
    subprocess.run(["umount", str(target)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "small_disk"
    try:
        mount_small_disk(target)
    except SmallDiskError as error:
        pytest.fail(str(error))  # not a skip: the disk-full handling would go untested
    try:
        yield target
    finally:
        unmount_small_disk(target)


def _noise(count: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Random pixels do not compress: a few frames fill the small disk."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _speech_like(seconds: float, rate: int = 16000) -> tuple[np.ndarray, int]:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)[None], rate


def _fill(folder: Path, leave_bytes: int) -> Path:
    """A filler file that leaves about `leave_bytes` free on the small disk; delete it to make room."""
    filler = folder / "filler.bin"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave_bytes))
    return filler


def _listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name != "lost+found")  # ext4's, on a loop file


def _frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _write(path: Path, frames: int, seed: int = 0) -> None:
    with StreamingVideoWriter(path, SIZE, SIZE, 25, audio=_speech_like(frames / 25), preset="ultrafast") as writer:
        for frame in _noise(frames, seed):
            writer.write(frame)


def writer_disk_full_scenario(folder: Path) -> dict:
    """Encode until the small disk at `folder` is full, then a short video on the same disk: what happened."""
    target = folder / "talking_00001.mp4"
    error: DiskFullError | None = None
    try:
        _write(target, 2000)
    except DiskFullError as caught:
        error = caught
    left = _listing(folder)
    _write(target, 25, seed=1)  # the space the failed file took is back: the next (smaller) run works
    return {"error": error, "left_after_failure": left, "next_run_frames": _frame_count(target)}


def test_the_writer_fails_with_an_actionable_error_and_leaves_nothing(small_disk: Path) -> None:
    figures = writer_disk_full_scenario(small_disk)
    error = figures["error"]
    assert isinstance(error, SonicGuardError) and error.reason == "disk_full", figures
    assert is_disk_full(error.__cause__), error.__cause__
    assert error.__cause__.errno in (errno.ENOSPC, errno.EDQUOT)
    message = str(error)
    assert str(small_disk) in message and "MiB free" in message and "written before it filled" in message
    assert "Expected:" in message and "Fix:" in message and "--output-directory" in message
    assert error.free_bytes is not None and error.free_bytes < DISK_BYTES // 4
    assert figures["left_after_failure"] == [], "a half-written mp4 was left in the output folder"
    assert figures["next_run_frames"] == 25


def test_stitching_onto_a_full_disk_removes_its_partial_file(small_disk: Path, tmp_path: Path) -> None:
    parts = [tmp_path / f"part_{i}.mp4" for i in range(3)]
    for i, path in enumerate(parts):
        with StreamingVideoWriter(path, SIZE, SIZE, 25, preset="ultrafast") as writer:
            for frame in _noise(20, seed=i):
                writer.write(frame)
    needed = sum(path.stat().st_size for path in parts)
    filler = _fill(small_disk, needed // 3)
    out = small_disk / "stitched.mp4"
    with pytest.raises(DiskFullError, match="is full"):
        stitch_videos(parts, out, _speech_like(60 / 25))
    assert _listing(small_disk) == ["filler.bin"], "a partial stitch was left"
    filler.unlink()
    info = stitch_videos(parts, out, _speech_like(60 / 25))
    assert info.frames == 60 and _frame_count(out) == 60


def _render(calls: list[int]):
    def render(segment: Segment, anchor: torch.Tensor | None, path: Path) -> SegmentOutput:
        calls.append(segment.index)
        with StreamingVideoWriter(path, SIZE, SIZE, 25, preset="ultrafast") as writer:
            for frame in _noise(segment.output_frames("none"), seed=segment.index):
                writer.write(frame)
        return SegmentOutput(info=writer.close(), tail_latents=None if segment.is_last else torch.ones(3, 4, 2, 2))

    return render


def test_a_segmented_job_on_a_full_disk_keeps_finished_segments_and_resumes(small_disk: Path) -> None:
    plan = plan_segments(60, 20, 2)
    job_dir = small_disk / "job"
    # Room for about one and a half segments: the second one fills the disk.
    sizes: list[int] = []
    probe = SegmentJob(small_disk / "probe", "probe", plan[:1])
    probe.run(_render([]))
    sizes.append(probe.video_path(0).stat().st_size)
    shutil.rmtree(small_disk / "probe")
    filler = _fill(small_disk, int(1.5 * sizes[0]))
    calls: list[int] = []
    with pytest.raises(DiskFullError):
        SegmentJob(job_dir, "settings", plan).run(_render(calls))
    assert calls == [0, 1]
    left = sorted(path.name for path in job_dir.iterdir())
    assert left == [MANIFEST_NAME, "segment_000.mp4", "segment_000_tail.pt"], left  # no partial, no temporary
    filler.unlink()  # the user frees space and queues the prompt again
    calls.clear()
    job = SegmentJob(job_dir, "settings", plan)
    assert job.is_done(0) and not job.notes
    paths = job.run(_render(calls))
    assert calls == list(range(1, len(plan))), "the finished segment was not reused"
    assert stitch_videos(paths, small_disk / "out.mp4").frames == 60


def test_a_server_run_onto_a_full_output_disk_fails_clearly_and_the_server_goes_on(
    comfy_server: ComfyServer,
) -> None:
    """The output subfolder `diskfull/` of the real server is a small disk with almost no room left."""
    folder = Path(comfy_server.base) / "output" / "diskfull"
    try:
        mount_small_disk(folder)
    except SmallDiskError as error:
        pytest.fail(str(error))
    try:
        filler = _fill(folder, 4096)  # one tmpfs page: less than the smallest video
        _, answer, history = run_prompt(comfy_server, quick_prompt(seed=77, filename_prefix="diskfull/run"))
        assert history is not None, answer
        error = execution_error_of(history)
        assert error is not None and error["exception_type"].rsplit(".", 1)[-1] == "DiskFullError", error
        assert str(folder) in error["exception_message"] and "Fix:" in error["exception_message"], error
        assert _listing(folder) == ["filler.bin"], "the failed run left files on the full disk"
        assert "system" in comfy_server.get_json("/system_stats", timeout=10)
        filler.unlink()  # space is freed: the same kind of run now works
        _, answer, history = run_prompt(comfy_server, quick_prompt(seed=78, filename_prefix="diskfull/run"))
        assert history is not None and execution_error_of(history) is None, answer or execution_error_of(history)
        saved = history["outputs"]["4"]["images"][0]
        assert _frame_count(folder / saved["filename"]) > 0
    finally:
        unmount_small_disk(folder)
