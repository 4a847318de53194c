"""Long audio: the clip in segments that each fit, continuous seams, resumable, stitched without re-encoding.

Top-down: Whisper features and motion buckets are computed once for the whole audio (they are small and
CPU-resident), then `SegmentJob` renders the segments in order. A segment samples its frames with the
previous segment's last latents as anchors (`sample_latents(anchor_latents=...)`), decodes and interpolates
only its own frames and writes them to a video-only mp4 in the job folder. Finished segments survive a
cancel, a crash or an OOM retry; the rerun skips them. At the end the segments are concatenated by copying
packets and the full audio is muxed once (`stitch_videos`).

The job folder is keyed by a fingerprint of everything that changes the frames (`segment_inputs`): the
prepared reference, the 16 kHz audio, the model files, the settings, the output size/steps/dtype and the
segment plan. Levers that do not change the result (CFG batching, chunking, offload, attention kernel) are
left out, so an OOM retry that turns one on resumes from the segments already finished.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import av
import numpy as np
import torch

from ..conditioning.reference_image import PreparedReference
from ..inputs.audio_loading import LoadedAudio
from ..memory.plan import ExecutionPlan
from ..models.checkpoints import SonicModelSet
from ..settings import GenerationSettings
from ..video.background_writer import BackgroundVideoWriter
from ..video.interpolate import pad_to_frame_count
from ..video.lipsync import measure_av_offset
from ..video.writer import StreamingVideoWriter, VideoFileInfo
from .pipeline import (
    GENERATED_FPS,
    ClipInputs,
    GenerationResult,
    OutputFormat,
    audio_track,
    clip_conditioning,
    default_placer,
    frame_stream,
    mouth_meter,
    output_format,
    prepare_clip,
    sample_clip,
    stage_seconds,
    windows_per_step,
)
from .runtime import ModelPlacer, RunHooks
from .segment_inputs import (
    DEFAULT_CONTEXT_FRAMES,
    DEFAULT_SEGMENT_SECONDS,
    features_for_frames,
    segment_fingerprint,
    segment_seed,
)
from .segments import (
    MANIFEST_NAME,
    MIDPOINT_MODES,
    Segment,
    SegmentJob,
    SegmentOutput,
    plan_segments,
    save_tensor_atomic,
    stitch_videos,
)

logger = logging.getLogger(__name__)


@dataclass
class _SegmentRun:
    """What every segment's render reads."""

    models: SonicModelSet
    reference: PreparedReference
    settings: GenerationSettings
    plan: ExecutionPlan
    inputs: ClipInputs
    output: OutputFormat
    placer: ModelPlacer
    device: torch.device
    hooks: RunHooks
    segments: list[Segment]
    context_frames: int
    window_offsets: list[int]  # progress: windows before each segment, then the total
    job_dir: Path

    def render(self, segment: Segment, anchor: torch.Tensor | None, path: Path) -> SegmentOutput:
        first, total = self.window_offsets[segment.index], self.window_offsets[-1]

        def on_window(done: int, _total: int) -> None:
            self.hooks.progress(first + done, total)
            self.hooks.check_cancel()

        start, stop = segment.context_start, segment.stop
        conditioning = clip_conditioning(
            self.inputs, self.reference, features_for_frames(self.inputs.features, start, stop),
            self.inputs.buckets[start:stop],
        )
        anchor_latents = anchor[-segment.context_frames :] if anchor is not None and segment.context_frames else None
        latents = sample_clip(
            self.models, conditioning, self.settings, self.plan, self.placer, self.device, self.hooks,
            seed=segment_seed(self.settings.seed, segment.index), on_window=on_window,
            anchor_latents=anchor_latents,
        )
        previous = self._previous_shown_frame(segment)
        # Without the frame the previous segment ended on, decode its last latent again (slightly different
        # pixels: the VAE's temporal decoder mixes the frames of a chunk).
        decode_from = segment.start if previous is not None else segment.decode_range(self.output.mode)[0]
        info = self._write_video(segment, latents[decode_from - start :], path, previous)
        tail = None if segment.is_last else latents[-self.context_frames :].clone()
        return SegmentOutput(info=info, tail_latents=tail)

    def _last_frame_path(self, index: int) -> Path:
        return self.job_dir / f"segment_{index:03d}_last.pt"

    def _previous_shown_frame(self, segment: Segment) -> torch.Tensor | None:
        """The frame the previous segment ended on: the seam's midpoint is taken from it to the new frames."""
        if segment.drop_leading(self.output.mode) == 0:
            return None
        path = self._last_frame_path(segment.index - 1)
        if not path.is_file():
            logger.warning("%s is missing; the seam's midpoint uses a re-decoded frame", path.name)
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def _write_video(
        self, segment: Segment, latents: torch.Tensor, path: Path, previous: torch.Tensor | None
    ) -> VideoFileInfo:
        mode, out = self.output.mode, self.output
        count = segment.output_frames(mode)
        if segment.is_last:  # the last segment pads the whole video to the audio's length
            before = sum(other.output_frames(mode) for other in self.segments[:-1])
            count = max(1, out.target_frames - before)
        last: torch.Tensor | None = None
        with frame_stream(latents, self.models, self.settings, self.plan, out, self.placer, self.device,
                          self.hooks, previous_frame=previous) as stream:
            frames = pad_to_frame_count(islice(stream, segment.drop_leading(mode), None), count)
            with BackgroundVideoWriter(StreamingVideoWriter(path, out.width, out.height, out.fps),
                                       observer=self.hooks.observer) as writer:
                for frame in frames:
                    writer.write(frame)
                    last = frame
                info = writer.close()
        if not segment.is_last and last is not None and mode in MIDPOINT_MODES:
            save_tensor_atomic(self._last_frame_path(segment.index), last.to(torch.float32))
        return info


def generate_segmented(
    models: SonicModelSet,
    reference: PreparedReference,
    audio: LoadedAudio,
    settings: GenerationSettings,
    plan: ExecutionPlan,
    output_path: Path,
    *,
    device: torch.device,
    hooks: RunHooks | None = None,
    placer: ModelPlacer | None = None,
    collect_frames: bool = False,
    job_dir: Path,
    segment_frames: int | None = None,
    context_frames: int = DEFAULT_CONTEXT_FRAMES,
    keep_segments: bool = False,
) -> GenerationResult:
    """`pipeline.generate` in segments of at most `segment_frames` generated frames, resumable from `job_dir`.

    The segment files are removed after a successful stitch unless `keep_segments`.
    """
    hooks = hooks or RunHooks()
    placer = placer or default_placer(device, plan)
    notes: list[str] = list(reference.warnings)
    limit = segment_frames or round(DEFAULT_SEGMENT_SECONDS * GENERATED_FPS)

    inputs = prepare_clip(models, reference, audio, settings, plan, placer, device, hooks)
    output = output_format(models, settings, reference, audio, notes)
    segments = plan_segments(inputs.num_frames, limit, context_frames)
    offsets = [0]
    for segment in segments:
        offsets.append(offsets[-1] + windows_per_step(segment.stop - segment.context_start) * plan.inference_steps)
    fingerprint = segment_fingerprint(models, reference, audio, settings, plan, output, limit, context_frames)
    job = SegmentJob(job_dir, fingerprint, segments)
    notes.extend(job.notes)  # segments redone because a file was missing or damaged
    reused = sum(job.is_done(segment.index) for segment in segments)
    run = _SegmentRun(models, reference, settings, plan, inputs, output, placer, device, hooks, segments,
                      context_frames, offsets, Path(job_dir))

    def on_segment(done: int, total: int) -> None:
        hooks.progress(offsets[done], offsets[-1])
        hooks.check_cancel()

    paths = job.run(run.render, on_segment=on_segment)
    offset = None
    with hooks.observer.stage("encode"):
        meter = mouth_meter(settings, reference, output)
        if meter is not None:
            for frame in _read_frames(paths):
                meter.update(frame)
            offset = measure_av_offset(meter.energies, audio.waveform, float(output.fps)).correction_s()
            notes.append(f"lip sync: measured audio-video offset {offset:+.3f} s; audio shifted to cancel it")
        video = stitch_videos(paths, output_path, audio_track(audio), audio_offset_s=offset or 0.0)
    notes.append(f"long audio: {len(segments)} segments of up to {limit} generated frames with {context_frames} "
                 f"anchor frames at each seam" + (f"; {reused} reused from {job_dir}" if reused else ""))
    frames = _frames_tensor(_read_frames([video.path])) if collect_frames else None
    if not keep_segments:
        _remove_segment_files(Path(job_dir))
    return GenerationResult(video=video, fps=output.fps, frames=frames, notes=notes,
                            stage_seconds=stage_seconds(hooks), av_offset_s=offset)


def _remove_segment_files(job_dir: Path) -> None:
    """Only the files SegmentJob and this module write; the folder goes too when nothing else is in it."""
    for path in [*job_dir.glob("segment_*"), job_dir / MANIFEST_NAME]:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: someone else's files stay
        job_dir.rmdir()


def _read_frames(paths: list[Path]) -> Iterator[np.ndarray]:
    """Decoded frames (uint8 HxWx3) of the given videos in order, one at a time."""
    for path in paths:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")


def _frames_tensor(frames: Iterable[np.ndarray]) -> torch.Tensor:
    """[T, H, W, 3] float in [0, 1], read back from the finished video (resumed segments hold no frames)."""
    return torch.from_numpy(np.stack(list(frames))).float() / 255.0
