"""Long audio in segments: plan, generate in order with continuous seams, resume, stitch without re-encoding.

Seams. Segment k>0 also generates `context` frames taken from the tail of segment k-1: their latents are
initialised from (anchored to) the last latents segment k-1 produced, so the temporal layers see motion
continue instead of restart. The overlap frames are *dropped*, not cross-faded: segment k-1's video file is
already encoded and is stitched by copying packets, so nothing can be blended across the cut. With a midpoint
interpolation mode, segment k decodes its last context frame too and keeps the midpoint between it and its
first own frame (but not the context frame itself), so the stitched clip has the same 2N-1 frames as an
unsegmented run.

Resume. The job folder holds `manifest.json` (a fingerprint of the inputs' content hashes + settings, and
the finished segments with the sha256 and size of each of their files), `segment_NNN.mp4` (video only) and
`segment_NNN_tail.pt` (the anchor latents for the next segment). Every file is written under a temporary name,
fsynced, renamed into place and its folder fsynced; the manifest is written last, so a segment counts as
finished only once all its files are on disk. A rerun with the same fingerprint verifies the finished segments'
hashes and skips them; the first one that is missing or damaged is redone with every segment after it (they
were anchored on it), and `notes` says which and why. Temporary files a crash left behind are removed on start.
A different fingerprint, or a manifest of another version, clears the folder's segment files and starts over.
The audio is muxed once over the whole stitched video.

Disk full. A write that fails with ENOSPC/EDQUOT raises `DiskFullError` (naming the folder and the free space)
after removing the file it was writing; finished segments stay, so the rerun after freeing space resumes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import torch

from ..errors import BadInputError
from ..video.writer import AudioInput, AudioTrackEncoder, VideoFileInfo, disk_full_error, is_disk_full

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 2  # 2: sha256 and size of every finished segment file
MIDPOINT_MODES = ("rife", "blend")
# What an interrupted write leaves: `x.tmp`, `x.pt.tmp`, `segment_NNN.partial.mp4`.
_TEMPORARY = re.compile(r"(\.tmp$)|(\.partial\.)")
_SEGMENT_FILE = re.compile(r"^segment_(\d+)[._]")


@dataclass(frozen=True)
class Segment:
    """Own generated frames [start, stop); it generates [context_start, stop), the front being overlap."""

    index: int
    start: int
    stop: int
    context_start: int
    is_last: bool

    @property
    def context_frames(self) -> int:
        return self.start - self.context_start

    def decode_range(self, mode: str) -> tuple[int, int]:
        """Generated frames to decode: one overlap frame more when the seam needs its midpoint."""
        lead = 1 if mode in MIDPOINT_MODES and self.context_frames > 0 else 0
        return self.start - lead, self.stop

    def drop_leading(self, mode: str) -> int:
        """Output frames to drop from the front of this segment's interpolated stream (the overlap frame)."""
        return 1 if mode in MIDPOINT_MODES and self.context_frames > 0 else 0

    def output_frames(self, mode: str) -> int:
        """Frames this segment contributes: the stitched total equals an unsegmented run's (2N-1 or N)."""
        own = self.stop - self.start
        return 2 * own - 1 + self.drop_leading(mode) if mode in MIDPOINT_MODES else own


def plan_segments(
    num_generated_frames: int, max_frames_per_segment: int, context_frames: int
) -> list[Segment]:
    """Split N generated frames into balanced segments that each generate at most `max_frames_per_segment`."""
    n, limit, context = num_generated_frames, max_frames_per_segment, context_frames
    if n <= 0:
        raise BadInputError(problem=f"there are {n} frames to generate", expected="at least one frame",
                            fix="use audio longer than 0.08 s")
    if n <= limit:
        return [Segment(0, 0, n, 0, True)]
    if context < 1 or limit - context < 1:
        raise BadInputError(
            problem=f"segments of {limit} frames with {context} context frames cannot cover the clip",
            expected="at least 1 context frame and segments longer than the context",
            fix="raise the segment length or lower the context frames",
        )
    count = 1 + -(-(n - limit) // (limit - context))
    target = -(-(n + (count - 1) * context) // count)  # generated frames per segment, balanced
    segments: list[Segment] = []
    start = 0
    while start < n:
        first = not segments
        own_cap = target if first else target - context
        stop = min(n, start + max(own_cap, 1))
        previous_own = 0 if first else segments[-1].stop - segments[-1].start
        overlap = 0 if first else min(context, previous_own)  # anchors come from the previous segment only
        segments.append(Segment(len(segments), start, stop, start - overlap, stop == n))
        start = stop
    return segments


def file_sha256(path: str | Path) -> str:
    """Content hash of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Content hash of an in-memory tensor (e.g. a ComfyUI IMAGE or AUDIO waveform)."""
    data = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def job_fingerprint(input_hashes: Mapping[str, str], settings: Mapping[str, object]) -> str:
    """One hash over the inputs' content hashes and every setting that changes the frames."""
    payload = json.dumps(
        {"inputs": dict(input_hashes), "settings": dict(settings)}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable: without it a crash can bring back the old directory entry."""
    if os.name == "nt":  # Windows cannot open a folder as a file; NTFS journals the rename itself
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def replace_durably(temporary: Path, path: Path) -> None:
    """fsync the finished temporary file, rename it into place, fsync the folder.

    A file system that allocates late (ext4, XFS) may report a full disk only at the fsync: DiskFullError too."""
    try:
        fsync_file(temporary)
        os.replace(temporary, path)
        fsync_dir(path.parent)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(path, error) from error
        raise


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_dir(path.parent)
    except OSError as error:
        full = disk_full_error(path, error, needed_bytes=len(data)) if is_disk_full(error) else None
        temporary.unlink(missing_ok=True)
        if full is not None:
            raise full from error
        raise


def save_tensor_atomic(path: Path, tensor: torch.Tensor) -> None:
    """torch.save through memory: a full disk then fails as an OSError (DiskFullError), not torch's RuntimeError."""
    buffer = io.BytesIO()
    torch.save(tensor.detach().to("cpu").clone(), buffer)
    _write_atomic(path, buffer.getvalue())


def _file_record(path: Path) -> dict[str, object]:
    return {"name": path.name, "sha256": file_sha256(path), "size": path.stat().st_size}


def _check_file(folder: Path, record: object) -> str:
    """'' when the recorded file is on disk with its recorded size and hash, else what is wrong with it."""
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        return "its manifest entry is malformed"
    path = folder / record["name"]
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    if size != record.get("size"):
        return f"{path.name} is {size} bytes, the manifest recorded {record.get('size')}"
    if file_sha256(path) != record.get("sha256"):
        return f"{path.name} does not match its recorded sha256 (damaged on disk)"
    return ""


@dataclass(frozen=True)
class SegmentOutput:
    """What rendering one segment produced: its video-only file and the anchor latents for the next one."""

    info: VideoFileInfo
    tail_latents: torch.Tensor | None


# render(segment, anchor latents from the previous segment or None, path to write the video to)
RenderSegment = Callable[[Segment, torch.Tensor | None, Path], SegmentOutput]


class SegmentJob:
    """A resumable run of segments in one job folder (the folder must be used by this job only).

    `notes` says what resuming found: segments redone because a file was missing or damaged.
    """

    def __init__(self, job_dir: str | Path, fingerprint: str, segments: Sequence[Segment]) -> None:
        self.job_dir = Path(job_dir)
        self.job_dir.mkdir(parents=True, exist_ok=True)
        self.segments = list(segments)
        plan = json.dumps([asdict(segment) for segment in self.segments])
        self.fingerprint = hashlib.sha256(f"{fingerprint}{plan}".encode()).hexdigest()
        self.notes: list[str] = []
        self._done: dict[str, dict[str, object]] = {}
        self._done = self._load_or_reset()

    def video_path(self, index: int) -> Path:
        return self.job_dir / f"segment_{index:03d}.mp4"

    def tail_path(self, index: int) -> Path:
        return self.job_dir / f"segment_{index:03d}_tail.pt"

    def is_done(self, index: int) -> bool:
        """Finished and verified when the job was opened (hash and size of each of its files)."""
        return str(index) in self._done

    def run(self, render: RenderSegment, on_segment: Callable[[int, int], None] | None = None) -> list[Path]:
        """Render every unfinished segment in order; `on_segment(done, total)` may raise to stop."""
        anchor: torch.Tensor | None = None
        for segment in self.segments:
            if self.is_done(segment.index):
                logger.info("segment %d/%d already done, reusing it", segment.index + 1, len(self.segments))
                anchor = self._load_tail(segment.index)
            else:
                anchor = self._render_one(render, segment, anchor)
            if on_segment is not None:
                on_segment(segment.index + 1, len(self.segments))
        return [self.video_path(segment.index) for segment in self.segments]

    def _render_one(
        self, render: RenderSegment, segment: Segment, anchor: torch.Tensor | None
    ) -> torch.Tensor | None:
        partial = self.job_dir / f"segment_{segment.index:03d}.partial.mp4"
        try:
            output = render(segment, anchor, partial)
            record: dict[str, object] = {"frames": output.info.frames, "video": None, "tail": None}
            if output.tail_latents is not None:
                save_tensor_atomic(self.tail_path(segment.index), output.tail_latents)
                record["tail"] = _file_record(self.tail_path(segment.index))
            replace_durably(partial, self.video_path(segment.index))
        except BaseException:
            partial.unlink(missing_ok=True)  # a cancel, crash-free failure or full disk leaves no half file
            raise
        record["video"] = _file_record(self.video_path(segment.index))
        self._done[str(segment.index)] = record
        self._save_manifest()
        return output.tail_latents

    def _load_tail(self, index: int) -> torch.Tensor | None:
        path = self.tail_path(index)
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    def _load_or_reset(self) -> dict[str, dict[str, object]]:
        manifest_path = self.job_dir / MANIFEST_NAME
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            manifest = None
        except (OSError, ValueError) as error:
            logger.warning("the manifest in %s cannot be read (%s); starting the job over", self.job_dir, error)
            manifest = {}
        if isinstance(manifest, dict) and manifest.get("fingerprint") == self.fingerprint:
            if manifest.get("version") == MANIFEST_VERSION:
                recorded = dict(manifest.get("done", {}))
                done = self._verified(recorded)
                self._remove_unrecorded(done)
                if done != recorded:  # a crash before the redo must not trust the dropped records again
                    self._done = done
                    self._save_manifest()
                return done
            logger.info("job folder %s holds a version %s manifest (this is version %d); starting over",
                        self.job_dir, manifest.get("version"), MANIFEST_VERSION)
        elif manifest is not None:
            logger.info("job folder %s holds a different job; starting fresh", self.job_dir)
        for stale in self.job_dir.glob("segment_*"):
            stale.unlink()
        self._done = {}
        self._save_manifest()
        return {}

    def _verified(self, done: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
        """The finished segments whose files are intact, up to the first that is not: that one and every later
        one (anchored on it) are redone."""
        kept: dict[str, dict[str, object]] = {}
        for segment in self.segments:
            record = done.get(str(segment.index))
            if record is None:
                break
            problem = _check_file(self.job_dir, record.get("video"))
            if not problem and record.get("tail") is not None:
                problem = _check_file(self.job_dir, record.get("tail"))
            if not problem and record.get("tail") is None and not segment.is_last:
                problem = "its anchor latents were never recorded"
            if problem:
                later = sum(str(other.index) in done for other in self.segments[segment.index + 1 :])
                note = (f"segment {segment.index + 1}/{len(self.segments)} redone: {problem}"
                        + (f"; {later} finished segment(s) after it redone too (anchored on it)" if later else ""))
                logger.warning("%s (job folder %s)", note, self.job_dir)
                self.notes.append(note)
                break
            kept[str(segment.index)] = record
        return kept

    def _remove_unrecorded(self, done: Mapping[str, object]) -> None:
        """Temporaries a crash left and the files of segments not (or no longer) finished: never trusted."""
        for path in self.job_dir.glob("segment_*"):
            match = _SEGMENT_FILE.match(path.name)
            if _TEMPORARY.search(path.name) or match is None or str(int(match.group(1))) not in done:
                logger.info("removing %s (left by an unfinished run)", path.name)
                path.unlink()
        for path in self.job_dir.glob(MANIFEST_NAME + ".tmp"):
            path.unlink()

    def _save_manifest(self) -> None:
        manifest = {
            "version": MANIFEST_VERSION,
            "fingerprint": self.fingerprint,
            "segments": [asdict(segment) for segment in self.segments],
            "done": self._done,
        }
        _write_atomic(self.job_dir / MANIFEST_NAME, json.dumps(manifest, indent=1).encode())


def stitch_videos(
    video_paths: Sequence[str | Path],
    out_path: str | Path,
    audio: AudioInput | None = None,
    audio_offset_s: float = 0.0,
) -> VideoFileInfo:
    """Concatenate video-only mp4s by copying packets, encoding the audio once over the whole length.

    With one input this re-muxes a file with (shifted) audio: that is how lip-sync correction is applied.
    The result is written under a temporary name and renamed into place.
    """
    if not video_paths:
        raise ValueError("stitch_videos needs at least one video file")
    out_path = Path(out_path)
    temporary = out_path.with_name(out_path.stem + ".partial" + out_path.suffix)
    try:
        frames, fps, codec = _remux(video_paths, temporary, audio, audio_offset_s)
        replace_durably(temporary, out_path)
    except OSError as error:
        full = disk_full_error(out_path, error) if is_disk_full(error) else None
        temporary.unlink(missing_ok=True)
        if full is not None:
            raise full from error
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return VideoFileInfo(
        path=out_path,
        frames=frames,
        fps=fps,
        duration_s=float(Fraction(frames) / fps),
        has_audio=audio is not None,
        audio_offset_s=audio_offset_s if audio is not None else 0.0,
        video_codec=codec,
    )


def _remux(
    video_paths: Sequence[str | Path], target: Path, audio: AudioInput | None, audio_offset_s: float
) -> tuple[int, Fraction, str]:
    frames, fps, codec = 0, Fraction(0), ""
    with av.open(str(target), mode="w", format="mp4") as output:
        out_stream = None
        audio_track = None
        for path in video_paths:
            with av.open(str(path)) as source:
                stream = source.streams.video[0]
                rate = Fraction(stream.average_rate or stream.guessed_rate)
                if out_stream is None:
                    out_stream = output.add_stream_from_template(stream)
                    fps, codec = rate, stream.codec_context.name
                    if audio is not None:
                        audio_track = AudioTrackEncoder(output, audio[0], audio[1], audio_offset_s)
                elif rate != fps or stream.codec_context.name != codec or (
                    stream.width, stream.height) != (out_stream.width, out_stream.height):
                    raise ValueError(f"{path} does not match the first segment's codec, size or frame rate")
                # Each file's timestamps start at 0: shift them to where the previous files ended.
                shift_s = Fraction(frames) / fps
                for packet in source.demux(stream):
                    if packet.dts is None:  # the demuxer's empty flush packet
                        continue
                    shift = int(round(shift_s / packet.time_base))
                    packet.pts = None if packet.pts is None else packet.pts + shift
                    packet.dts += shift
                    packet.stream = out_stream
                    output.mux(packet)
                    frames += 1
                    if audio_track is not None:
                        audio_track.advance_to(float(Fraction(frames) / fps))
        if audio_track is not None:
            audio_track.finish(float(Fraction(frames) / fps))
    return frames, fps, codec
