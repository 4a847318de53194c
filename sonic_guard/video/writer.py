"""Write frames to an mp4 as they arrive, with the audio muxed alongside, so host RAM stays flat.

The official Sonic collects every frame, writes a silent file, then runs ffmpeg again to add the audio with
`-shortest`. Here each frame is encoded the moment it is written and the audio is encoded in step with the
video clock, so the file holds interleaved video and AAC packets and nothing grows with the clip length.
At `close()` the audio is cut or padded with silence so both streams last frames/fps seconds.

A full disk (ENOSPC, or EDQUOT for a quota) while opening, writing or closing removes the half-written file and
raises `DiskFullError`, which names the folder and its free space.
"""

from __future__ import annotations

import errno
import itertools
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Self

import av
import numpy as np
import torch

from ..errors import BadAudioError, DiskFullError

logger = logging.getLogger(__name__)

# AAC packs 1024 samples per packet; at 48 kHz that is 21 ms, well inside one video frame (40 ms at 25 fps),
# whereas at the 16 kHz Sonic works in it would be 64 ms.
AAC_RATES = (32000, 44100, 48000)
DEFAULT_AAC_RATE = 48000
AUDIO_FEED_SECONDS = 1.0

AudioInput = tuple[np.ndarray | torch.Tensor, int]
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
    """An OSError (PyAV's included: av.error.OSError subclasses it) that means no space or no quota left."""
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS


def disk_full_error(path: str | Path, error: OSError, needed_bytes: int | None = None,
                    written_bytes: int | None = None) -> DiskFullError:
    """The actionable error for a write to `path` that failed with `error` (ENOSPC/EDQUOT)."""
    folder = Path(path).parent
    try:
        free: int | None = shutil.disk_usage(folder).free
    except OSError as usage_error:  # the message then says "free space unknown"
        logger.debug("cannot read the free space of %s: %s", folder, usage_error)
        free = None
    logger.error("disk full while writing %s: %s", path, error)
    return DiskFullError(str(folder), free_bytes=free, needed_bytes=needed_bytes, written_bytes=written_bytes)


@dataclass(frozen=True)
class VideoFileInfo:
    """What was written: duration is frames / fps (the audio is cut or padded to match it)."""

    path: Path
    frames: int
    fps: Fraction
    duration_s: float
    has_audio: bool
    audio_offset_s: float = 0.0
    video_codec: str = ""


def pick_video_codec() -> str:
    """libx264 when this PyAV build has it, else the always-present mpeg4."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def frame_to_uint8(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 HxWx3 as is, or a float [3,H,W] tensor/array in [0,1] rounded (not truncated) to uint8 HxWx3."""
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8:
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"uint8 frames must be HxWx3, got shape {frame.shape}")
        return frame
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().to("cpu", torch.float32).numpy()
    array = np.asarray(frame, dtype=np.float32)
    if array.ndim != 3 or array.shape[0] != 3:
        raise ValueError(f"float frames must be [3,H,W] in [0,1], got shape {array.shape}")
    # numpy, not torch: tiny per-frame torch ops pay intra-op thread start-up on busy hosts.
    scaled = np.clip(np.rint(array * 255.0), 0.0, 255.0).astype(np.uint8)
    return np.ascontiguousarray(scaled.transpose(1, 2, 0))


def as_channels_first(waveform: np.ndarray | torch.Tensor) -> np.ndarray:
    """float32 [C,T] with C in (1, 2): mono stays mono, more than two channels are averaged to mono."""
    array = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim == 3 and array.shape[0] == 1:  # ComfyUI AUDIO is [B,C,T]
        array = array[0]
    if array.ndim != 2 or array.shape[1] == 0:
        raise BadAudioError(
            problem=f"the audio array has shape {array.shape}",
            expected="a waveform [channels, samples] with at least one sample",
            fix="pass the audio as loaded by a Load Audio node",
        )
    if array.shape[0] > 2:
        array = array.mean(axis=0, keepdims=True)
    return np.ascontiguousarray(array, dtype=np.float32)


class AudioTrackEncoder:
    """Encodes one AAC stream from an in-memory waveform, up to a moving end time.

    `audio_offset_s` shifts the audio: positive delays it (silence first), negative drops its start.
    Nothing is copied: each call slices the part of the shifted waveform it needs.
    """

    def __init__(
        self,
        container: av.container.OutputContainer,
        waveform: np.ndarray | torch.Tensor,
        sample_rate: int,
        audio_offset_s: float = 0.0,
    ) -> None:
        if sample_rate <= 0:
            raise BadAudioError(
                problem=f"the audio sample rate is {sample_rate}",
                expected="a positive sample rate such as 16000 or 44100",
                fix="reload the audio file",
            )
        self._waveform = as_channels_first(waveform)
        self._rate = int(sample_rate)
        self._shift = int(round(audio_offset_s * self._rate))
        layout = "mono" if self._waveform.shape[0] == 1 else "stereo"
        out_rate = self._rate if self._rate in AAC_RATES else DEFAULT_AAC_RATE
        self._stream = container.add_stream("aac", rate=out_rate, layout=layout)
        self._stream.bit_rate = 128_000 if layout == "mono" else 192_000
        self._container = container
        self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=out_rate)
        self._layout = layout
        self._fed = 0  # samples of the shifted timeline already handed to the encoder

    def _shifted_slice(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) of the shifted timeline; silence where the waveform has none."""
        out = np.zeros((self._waveform.shape[0], stop - start), dtype=np.float32)
        src_start, src_stop = start - self._shift, stop - self._shift
        lo, hi = max(src_start, 0), min(src_stop, self._waveform.shape[1])
        if hi > lo:
            out[:, lo - src_start : hi - src_start] = self._waveform[:, lo:hi]
        return out

    def _encode(self, frame: av.AudioFrame | None) -> None:
        for resampled in self._resampler.resample(frame):
            for packet in self._stream.encode(resampled):
                self._container.mux(packet)

    def advance_to(self, seconds: float) -> None:
        """Encode the audio up to `seconds` on the output clock."""
        target = int(round(seconds * self._rate))
        step = max(1, int(self._rate * AUDIO_FEED_SECONDS))
        while self._fed < target:
            stop = min(target, self._fed + step)
            frame = av.AudioFrame.from_ndarray(
                self._shifted_slice(self._fed, stop), format="fltp", layout=self._layout
            )
            frame.sample_rate = self._rate
            frame.pts = self._fed
            frame.time_base = Fraction(1, self._rate)
            self._encode(frame)
            self._fed = stop

    def finish(self, seconds: float) -> None:
        """Encode up to `seconds`, then flush the resampler and the encoder."""
        self.advance_to(seconds)
        self._encode(None)
        for packet in self._stream.encode(None):
            self._container.mux(packet)


class ClosedOrAborted:
    """`with writer:` closes the file on success and aborts it (removes it) when the block raised: a cancelled or
    failed run must not leave a short video that looks finished. Subclasses define `close()` and `abort()`."""

    def close(self) -> VideoFileInfo:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


class StreamingVideoWriter(ClosedOrAborted):
    """Context manager that encodes each frame on `write()`; `close()` returns a VideoFileInfo.

    Odd widths/heights are cropped by one pixel because yuv420p needs even dimensions. `preset` is libx264's
    speed/size trade-off (ignored by the mpeg4 fallback). `codec` None picks libx264 when available.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: Fraction | float | int,
        audio: AudioInput | None = None,
        crf: int = 18,
        audio_offset_s: float = 0.0,
        preset: str = "medium",
        codec: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1001)
        if width < 2 or height < 2 or self.fps <= 0:
            raise ValueError(f"need width, height >= 2 and fps > 0, got {width}x{height} at {fps}")
        self.width, self.height = width - width % 2, height - height % 2
        self._source_size = (height, width)
        self._frames = 0
        self._closed = False
        self._audio_offset_s = float(audio_offset_s)
        self._codec = codec or pick_video_codec()
        if self._codec not in ("libx264", "mpeg4"):
            raise ValueError(f"codec must be 'libx264' or 'mpeg4', got {self._codec!r}")
        try:
            self._container = av.open(str(self.path), mode="w", format="mp4")
        except OSError as error:
            if is_disk_full(error):
                full = disk_full_error(self.path, error)
                self.path.unlink(missing_ok=True)
                raise full from error
            raise
        try:
            self._video = self._container.add_stream(self._codec, rate=self.fps)
            self._video.width, self._video.height = self.width, self.height
            self._video.pix_fmt = "yuv420p"
            if self._codec == "libx264":
                self._video.options = {"crf": str(crf), "preset": preset}
            else:  # mpeg4 has no CRF; a generous bit rate keeps it from smearing faces
                self._video.bit_rate = max(1_000_000, self.width * self.height * 8)
            self._audio = (
                AudioTrackEncoder(self._container, audio[0], audio[1], audio_offset_s)
                if audio is not None
                else None
            )
        except BaseException:
            self._container.close()
            raise
        logger.debug("writing %s: %dx%d at %s fps, codec %s", self.path, self.width, self.height,
                     self.fps, self._codec)

    @property
    def frames_written(self) -> int:
        return self._frames

    def write(self, frame: np.ndarray | torch.Tensor) -> None:
        """Encode one frame now (uint8 HxWx3, or float [3,H,W] in [0,1])."""
        if self._closed:
            raise ValueError(f"{self.path} is already closed")
        pixels = frame_to_uint8(frame)
        if pixels.shape[:2] != self._source_size:
            raise ValueError(f"frame is {pixels.shape[1]}x{pixels.shape[0]}, the writer was opened for "
                             f"{self._source_size[1]}x{self._source_size[0]}")
        pixels = np.ascontiguousarray(pixels[: self.height, : self.width])
        video_frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        video_frame.pts = self._frames
        video_frame.time_base = 1 / self.fps
        try:
            for packet in self._video.encode(video_frame):
                self._container.mux(packet)
            self._frames += 1
            if self._audio is not None:
                self._audio.advance_to(float(self._frames / self.fps))
        except OSError as error:
            if is_disk_full(error):
                raise self._abort_disk_full(error) from error
            raise

    def close(self) -> VideoFileInfo:
        """Flush both encoders, cut/pad the audio to the video duration and close the file."""
        duration = float(self._frames / self.fps)
        if not self._closed:
            self._closed = True
            try:
                try:
                    for packet in self._video.encode(None):
                        self._container.mux(packet)
                    if self._audio is not None:
                        self._audio.finish(duration)
                finally:
                    self._container.close()
            except OSError as error:
                if is_disk_full(error):
                    raise self._abort_disk_full(error) from error
                raise
        return VideoFileInfo(
            path=self.path,
            frames=self._frames,
            fps=self.fps,
            duration_s=duration,
            has_audio=self._audio is not None,
            audio_offset_s=self._audio_offset_s if self._audio is not None else 0.0,
            video_codec=self._codec,
        )

    def abort(self) -> None:
        """Stop without finishing: close the container and remove the file (a cancelled or failed run must not
        leave a short video that looks finished)."""
        if not self._closed:
            self._closed = True
            self._close_container_quietly()
        self.path.unlink(missing_ok=True)

    def _close_container_quietly(self) -> None:
        """Close the container when its file is going anyway: an OSError (a full disk while flushing what was
        buffered) is only logged."""
        try:
            self._container.close()
        except OSError as error:
            logger.debug("closing %s before removing it: %s", self.path, error)

    def _abort_disk_full(self, error: OSError) -> DiskFullError:
        """Close what can be closed and remove the half-written file: a truncated mp4 must not look finished."""
        self._closed = True
        try:
            written = self.path.stat().st_size if self.path.exists() else None
        except OSError:
            written = None
        self._close_container_quietly()
        full = disk_full_error(self.path, error, written_bytes=written)  # free space read while it is full
        self.path.unlink(missing_ok=True)
        return full


def write_stream(
    frames: Iterable[np.ndarray | torch.Tensor],
    path: str | Path,
    fps: Fraction | float | int,
    audio: AudioInput | None = None,
    *,
    audio_offset_s: float = 0.0,
    crf: int = 18,
    on_frame: Callable[[int], None] | None = None,
) -> VideoFileInfo:
    """Encode a frame stream to `path`, sizing the video from the first frame; `on_frame(count)` may raise."""
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("write_stream got no frames")
    height, width = frame_to_uint8(first).shape[:2]
    writer = StreamingVideoWriter(path, width, height, fps, audio, crf=crf, audio_offset_s=audio_offset_s)
    with writer:
        for frame in itertools.chain((first,), iterator):
            writer.write(frame)
            if on_frame is not None:
                on_frame(writer.frames_written)
    return writer.close()
