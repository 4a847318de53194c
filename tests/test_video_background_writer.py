"""The writer thread: the same video as the in-line writer, encoding off the producer's thread, errors carried
back to the producer, and nothing half-written left behind by an abort or a full disk."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from test_disk_full import SmallDiskError, mount_small_disk, unmount_small_disk

from sonic_guard.errors import DiskFullError
from sonic_guard.video.background_writer import BackgroundVideoWriter
from sonic_guard.video.writer import StreamingVideoWriter

SIZE = 64
FPS = Fraction(25)


def frames(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, SIZE, SIZE, generator=generator) for _ in range(count)]


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def audio_packets(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for packet in container.demux(audio=0) if packet.size)


class ThreadRecorder:
    """A stage observer (the engine's protocol) noting which thread opened each stage."""

    def __init__(self) -> None:
        self.threads: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.threads.append((str(name), threading.current_thread().name))
        yield


def encoder_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "sonic-video-encoder"]


def test_the_video_equals_the_inline_writers_and_encodes_on_its_own_thread(tmp_path: Path) -> None:
    clip, tone = frames(30), (np.sin(np.arange(16000 * 2) / 8.0).astype(np.float32) * 0.2, 16000)
    with StreamingVideoWriter(tmp_path / "inline.mp4", SIZE, SIZE, FPS, audio=tone) as inline:
        for frame in clip:
            inline.write(frame)
    recorder = ThreadRecorder()
    with BackgroundVideoWriter(StreamingVideoWriter(tmp_path / "thread.mp4", SIZE, SIZE, FPS, audio=tone),
                               observer=recorder, queue_frames=3) as writer:
        for frame in clip:
            writer.write(frame)
        info = writer.close()
    assert info.frames == 30 and info.has_audio and writer.frames_written == 30
    ours, theirs = decoded(tmp_path / "thread.mp4"), decoded(tmp_path / "inline.mp4")
    assert len(ours) == len(theirs) == 30
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert audio_packets(tmp_path / "thread.mp4") == audio_packets(tmp_path / "inline.mp4") > 0
    producer = threading.current_thread().name
    encode_threads = {thread for stage, thread in recorder.threads if stage == "encode"}
    assert "sonic-video-encoder" in encode_threads and len(recorder.threads) == 31  # 30 frames + the flush
    assert [thread for _, thread in recorder.threads[:-1]] == ["sonic-video-encoder"] * 30
    assert recorder.threads[-1] == ("encode", producer)  # close flushes in the caller's thread
    assert encoder_threads() == []


@pytest.mark.parametrize("writer_class", [BackgroundVideoWriter, StreamingVideoWriter])
def test_an_exception_in_the_producer_removes_the_file_and_stops_the_thread(tmp_path: Path, writer_class) -> None:
    path = tmp_path / "cancelled.mp4"
    inline = StreamingVideoWriter(path, SIZE, SIZE, FPS)
    threaded = writer_class is BackgroundVideoWriter
    writer_under_test = BackgroundVideoWriter(inline, queue_frames=2) if threaded else inline
    with pytest.raises(KeyboardInterrupt), writer_under_test as writer:
        for index, frame in enumerate(frames(12)):
            writer.write(frame)
            if index == 7:
                raise KeyboardInterrupt  # what a cancel looks like to the writer
    assert not path.exists() and list(tmp_path.iterdir()) == []
    assert encoder_threads() == []


def test_a_frame_the_worker_refuses_fails_the_producer_and_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match="the writer was opened for 64x64"):  # noqa: PT012 - the raise is deferred
        with BackgroundVideoWriter(StreamingVideoWriter(path, SIZE, SIZE, FPS)) as writer:
            writer.write(torch.rand(3, SIZE, SIZE))
            writer.write(torch.rand(3, SIZE + 2, SIZE))  # queued fine; the worker refuses it
            for frame in frames(50):
                writer.write(frame)  # the worker's error surfaces here (or at close)
    assert not path.exists() and encoder_threads() == []


def test_a_full_disk_on_the_worker_thread_is_a_disk_full_error_and_no_file(tmp_path: Path) -> None:
    disk = tmp_path / "small_disk"
    try:
        mount_small_disk(disk, 1024 * 1024)
    except SmallDiskError as error:
        pytest.fail(str(error))  # not a skip: this is the path every run's encode takes now
    try:
        rng = np.random.default_rng(0)
        with pytest.raises(DiskFullError) as caught:  # noqa: PT012 - the error comes from the worker thread
            with BackgroundVideoWriter(StreamingVideoWriter(disk / "full.mp4", 256, 256, FPS, crf=0,
                                                            preset="ultrafast")) as writer:
                for _ in range(400):  # random pixels at crf 0: ~150 KiB a frame, the 1 MiB disk fills
                    writer.write(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
        assert str(disk) in str(caught.value)
        assert list(disk.iterdir()) == [] and encoder_threads() == []
    finally:
        unmount_small_disk(disk)
