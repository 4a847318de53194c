"""What a segment of long audio is made from: the segment length, its audio windows, its seed, and the
fingerprint that keys the job folder (everything that changes the frames, nothing that does not)."""

from __future__ import annotations

import numpy as np
import torch

from ..conditioning.audio_features import BUCKET_WINDOW, TOKEN_WINDOW, WHISPER_FRAMES_PER_GENERATED_FRAME, AudioFeatures
from ..conditioning.reference_image import PreparedReference
from ..errors import BadInputError
from ..inputs.audio_loading import LoadedAudio
from ..memory.plan import ExecutionPlan
from ..models.checkpoints import SonicModelSet
from ..settings import GenerationSettings
from .pipeline import GENERATED_FPS, OutputFormat
from .segments import job_fingerprint, tensor_sha256

FORMAT_VERSION = 1  # bump when the frames of a segment would change for the same inputs
DEFAULT_SEGMENT_SECONDS = 20.0
AUTO_SEGMENT_ABOVE_S = 30.0
MIN_SEGMENT_SECONDS = 2.0
DEFAULT_CONTEXT_FRAMES = 6
SEGMENT_SEED_STRIDE = 1_000_003  # distinct, reproducible noise per segment
# plan fields that change the frames; the rest are quality-neutral levers (see segment_fingerprint)
FRAME_PLAN_FIELDS = ("width", "height", "inference_steps", "dtype", "interpolate", "dynamic_scale")
SETTINGS_APPLIED_AFTER = ("duration", "lip_sync_correction")  # not part of a segment's frames


def segment_frames_for(audio_seconds: float, segment_seconds: float = 0.0) -> int | None:
    """Generated frames per segment, or None for one clip. 0 = automatic: segments only above 30 s."""
    if segment_seconds < 0 or (0 < segment_seconds < MIN_SEGMENT_SECONDS):
        raise BadInputError(
            problem=f"segment_seconds is {segment_seconds}",
            expected=f"0 (automatic) or at least {MIN_SEGMENT_SECONDS:g} s per segment",
            fix=f"set segment_seconds to 0 or to {MIN_SEGMENT_SECONDS:g} or more (20 is a good choice)",
        )
    if segment_seconds == 0:
        if audio_seconds <= AUTO_SEGMENT_ABOVE_S:
            return None
        segment_seconds = DEFAULT_SEGMENT_SECONDS
    if audio_seconds <= segment_seconds:
        return None
    return round(segment_seconds * GENERATED_FPS)


def features_for_frames(features: AudioFeatures, start: int, stop: int) -> AudioFeatures:
    """The features of generated frames [start, stop) as a clip of their own (windows keep their real audio)."""
    rows = WHISPER_FRAMES_PER_GENERATED_FRAME
    return AudioFeatures(
        multi_layer=features.multi_layer[rows * start : rows * stop + TOKEN_WINDOW],
        last_layer=features.last_layer[rows * start : rows * stop + BUCKET_WINDOW],
        num_frames_25fps=2 * (stop - start),
    )


def segment_seed(seed: int, index: int) -> int:
    return (seed + index * SEGMENT_SEED_STRIDE) % 2**64


def segment_fingerprint(
    models: SonicModelSet, reference: PreparedReference, audio: LoadedAudio, settings: GenerationSettings,
    plan: ExecutionPlan, output: OutputFormat, segment_frames: int, context_frames: int,
) -> str:
    """Hash of everything that changes a segment's frames. Levers that do not change the result (CFG batching,
    chunking, offload, attention kernel) are left out, so an OOM retry resumes from the finished segments."""
    inputs = {
        "reference": tensor_sha256(reference.reference),
        "face_mask": tensor_sha256(reference.face_mask),
        "clip_pixels": tensor_sha256(reference.clip_pixels),
        "audio_16k": tensor_sha256(torch.from_numpy(np.ascontiguousarray(audio.waveform))),
        "models": _model_identity(models),
    }
    frame_settings = {k: v for k, v in settings.to_dict().items() if k not in SETTINGS_APPLIED_AFTER}
    plan_fields = plan.to_dict()
    return job_fingerprint(inputs, {
        "format_version": FORMAT_VERSION,
        "settings": frame_settings,
        "plan": {name: plan_fields[name] for name in FRAME_PLAN_FIELDS},
        "output": {"mode": output.mode, "target_frames": output.target_frames, "fps": str(output.fps)},
        "segment_frames": segment_frames,
        "context_frames": context_frames,
    })


def _model_identity(models: SonicModelSet) -> str:
    """The model files by path, size and modification time (hashing gigabytes of weights would take minutes)."""
    parts = [str(next(models.unet.parameters()).dtype)]
    paths = models.paths
    for path in (paths.unet, paths.audio2token, paths.audio2bucket, paths.rife, paths.svd, paths.whisper):
        if path is None:
            parts.append("-")
            continue
        stat = path.stat() if path.exists() else None
        parts.append(f"{path.resolve()}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}")
    return "|".join(parts)
