"""One Sonic generation, top-down: audio -> face -> features -> sampler windows -> decode -> interpolate
-> video.

Memory by design: only one UNet window, one decode chunk and one frame pair are on the device at a time;
the whole-clip latents (a few KiB per frame) live on the CPU; decoded frames are encoded as they arrive, on
the writer's own thread, and (plan permitting) decode runs on a thread of its own, so decode, interpolation
and encoding overlap.
The memory plan (`ExecutionPlan`, decided by `memory.planner`) says which levers are on; this module
only executes it. The stages are public functions so that long audio (`long_audio`) runs the same stages
segment by segment.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..conditioning.audio_features import AudioFeatures, extract_audio_features
from ..conditioning.reference_image import PreparedReference
from ..inputs.audio_loading import LoadedAudio
from ..memory.plan import ExecutionPlan
from ..models.checkpoints import SonicModelSet
from ..models.compiled_unet import compiled_unet
from ..sampling.denoiser import ClipConditioning, compute_frame_buckets, make_denoise_window
from ..sampling.multi_device.launcher import DEFAULT_TIMEOUT_S, default_threads_per_rank, sample_on_devices
from ..sampling.multi_device.payload import RankJob
from ..sampling.sampler import WindowExchange, sample_latents
from ..settings import GenerationSettings
from ..telemetry.stage_observer import StageObserver
from ..video.background_writer import BackgroundVideoWriter
from ..video.decode import SVD_LATENT_SCALE, decode_stream, vae_chunk_decoder
from ..video.interpolate import (
    Midpoint,
    choose_mode,
    frames_for_duration,
    interpolate_stream,
    output_fps,
    pad_to_frame_count,
)
from ..video.lipsync import MouthMotionMeter, measure_av_offset, mouth_box_from_face
from ..video.smoothing import smooth_motion
from ..video.writer import StreamingVideoWriter, VideoFileInfo
from .background_stream import BackgroundStream
from .runtime import DevicePlacer, ModelPlacer, RunHooks, StageSwitcher, staged
from .segments import stitch_videos

logger = logging.getLogger(__name__)

GENERATED_FPS = 12.5
WINDOW_FRAMES = 25


@dataclass
class GenerationResult:
    video: VideoFileInfo
    fps: Fraction
    frames: torch.Tensor | None  # [T,H,W,3] float in [0,1], only when asked for (costs host RAM)
    notes: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    av_offset_s: float | None = None


@dataclass(frozen=True)
class ClipInputs:
    """What a run computes once from the reference and the whole audio; CPU tensors."""

    clip_embeds: torch.Tensor  # [1, 1, D]
    reference_latent: torch.Tensor  # [4, h, w], x0.18215
    conditioning_latent: torch.Tensor  # [4, h, w], unscaled
    features: AudioFeatures
    buckets: torch.Tensor  # [N, 2] motion buckets, motion_scale already applied to the head bucket

    @property
    def num_frames(self) -> int:
        return self.features.num_generated_frames


@dataclass(frozen=True)
class OutputFormat:
    """The resolved interpolation and the video's size, rate and length."""

    mode: str
    midpoint: Midpoint | None
    fps: Fraction
    width: int
    height: int
    target_frames: int


def generate(
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
) -> GenerationResult:
    """Generate a talking video from a prepared reference image and (already duration-fitted) audio."""
    hooks = hooks or RunHooks()
    placer = placer or default_placer(device, plan)
    notes: list[str] = list(reference.warnings)

    inputs = prepare_clip(models, reference, audio, settings, plan, placer, device, hooks)
    windows_total = windows_per_step(inputs.num_frames) * plan.inference_steps

    def on_window(done: int, _total: int) -> None:
        hooks.progress(done, windows_total)
        hooks.check_cancel()

    conditioning = clip_conditioning(inputs, reference)
    latents = sample_clip(models, conditioning, settings, plan, placer, device, hooks, seed=settings.seed,
                          on_window=on_window)

    output = output_format(models, settings, reference, audio, notes)
    with frame_stream(latents, models, settings, plan, output, placer, device, hooks) as frames:
        video, collected, offset = _encode(
            pad_to_frame_count(frames, output.target_frames), output_path, output, audio, settings,
            reference, hooks.observer, collect_frames,
        )
    if offset is not None:
        notes.append(f"lip sync: measured audio-video offset {offset:+.3f} s; audio shifted to cancel it")
    return GenerationResult(
        video=video, fps=output.fps, frames=collected, notes=notes, stage_seconds=stage_seconds(hooks),
        av_offset_s=offset,
    )


def default_placer(device: torch.device, plan: ExecutionPlan) -> ModelPlacer:
    return DevicePlacer(device, offload_idle=plan.offload_idle_models, stream_unet=plan.unet_weight_offload)


def windows_per_step(num_frames: int) -> int:
    return -(-num_frames // WINDOW_FRAMES)


def prepare_clip(
    models: SonicModelSet, reference: PreparedReference, audio: LoadedAudio, settings: GenerationSettings,
    plan: ExecutionPlan, placer: ModelPlacer, device: torch.device, hooks: RunHooks,
) -> ClipInputs:
    """Stages preprocess and audio_features: reference encodings, Whisper features and motion buckets."""
    with hooks.observer.stage("preprocess"):
        clip_embeds, reference_latent, conditioning_latent = _encode_reference(
            models, reference, placer, device, plan.torch_dtype
        )
    hooks.check_cancel()
    with hooks.observer.stage("audio_features"):
        with placer.place("whisper_encoder", models.whisper_encoder):
            features = extract_audio_features(
                audio.waveform, models.whisper_encoder, models.feature_extractor, device=device
            )
        with placer.place("motion_bucket_predictor", models.motion_bucket_predictor):
            buckets = compute_frame_buckets(models.motion_bucket_predictor, features, clip_embeds, device=device)
    hooks.check_cancel()
    return ClipInputs(clip_embeds, reference_latent, conditioning_latent, features,
                      buckets * torch.tensor([settings.motion_scale, 1.0]))


def clip_conditioning(
    inputs: ClipInputs, reference: PreparedReference, features: AudioFeatures | None = None,
    buckets: torch.Tensor | None = None,
) -> ClipConditioning:
    """The denoiser's per-clip inputs; `features`/`buckets` replace the whole clip's (a segment's slice)."""
    return ClipConditioning(
        reference_latent=inputs.reference_latent, conditioning_latent=inputs.conditioning_latent,
        clip_embeds=inputs.clip_embeds, face_mask=reference.face_mask,
        frame_buckets=inputs.buckets if buckets is None else buckets,
        features=inputs.features if features is None else features,
    )


def sample_clip(
    models: SonicModelSet, conditioning: ClipConditioning, settings: GenerationSettings, plan: ExecutionPlan,
    placer: ModelPlacer, device: torch.device, hooks: RunHooks, *, seed: int,
    on_window: Callable[[int, int], None], anchor_latents: torch.Tensor | None = None,
    exchange: WindowExchange | None = None,
) -> torch.Tensor:
    """Stage sampling: the denoised latents [N, 4, h, w] of the conditioning's frames, on the CPU.

    With `settings.devices`, worker processes sample instead (`multi_device`); `exchange` is how such a
    worker's sampler shares its windows.
    """
    if settings.devices and exchange is None:
        with hooks.observer.stage("sampling"):
            return sample_on_devices(RankJob(
                model_paths=models.paths, conditioning=conditioning, settings=settings, plan=plan, seed=seed,
                anchor_latents=anchor_latents, devices=settings.device_list,
                threads_per_rank=default_threads_per_rank(len(settings.device_list)), timeout_s=DEFAULT_TIMEOUT_S,
            ), on_window, on_rank_plan=lambda rank_plan: hooks.on_adjustment("rank_plan", rank_plan.to_plain()))
    with hooks.observer.stage("sampling"), placer.place("unet", models.unet), placer.place(
        "audio_token_projector", models.audio_token_projector
    ):
        models.unet.set_feed_forward_chunking(plan.ff_chunk)
        models.unet.ip_audio_scale = settings.ip_audio_scale
        compiling = compiled_unet(models.unet, device, hooks.compile_cache_dir,
                                  weight_streaming=plan.unet_weight_offload) if settings.compile_unet else None
        with compiling or contextlib.nullcontext() as compiled:
            denoise = make_denoise_window(
                compiled or models.unet, models.audio_token_projector, conditioning, device=device,
                dtype=plan.torch_dtype, cfg_batch=plan.cfg_batch, dynamic_scale=settings.dynamic_scale,
            )
            latents = sample_latents(
                conditioning.reference_latent.cpu().float(), conditioning.num_frames, plan.inference_steps,
                denoise, seed=seed, on_window=on_window, anchor_latents=anchor_latents, exchange=exchange,
            )
        if compiled is not None and compiled.outcome.note():
            hooks.on_adjustment("unet_compile", {"note": compiled.outcome.note(), **compiled.outcome.to_dict()})
        return latents


def output_format(
    models: SonicModelSet, settings: GenerationSettings, reference: PreparedReference, audio: LoadedAudio,
    notes: list[str],
) -> OutputFormat:
    """Resolve the interpolation mode (a note when RIFE is missing) and the video's frame count."""
    midpoint = models.rife.midpoint if models.rife is not None else None
    choice = choose_mode(settings.interpolation, midpoint, settings.interpolation_fallback)
    if choice.note:
        notes.append(choice.note)
    fps = output_fps(choice.mode)
    height, width = reference.reference.shape[-2:]
    return OutputFormat(choice.mode, midpoint, fps, int(width), int(height),
                        frames_for_duration(audio.duration_s, fps))


def decoding_models(placer: ModelPlacer, models: SonicModelSet) -> contextlib.ExitStack:
    """The VAE (and RIFE when loaded) placed on the device for decode and interpolation."""
    stack = contextlib.ExitStack()
    stack.enter_context(placer.place("vae", models.vae))
    if models.rife is not None:
        stack.enter_context(placer.place("rife", models.rife))
    return stack


@contextlib.contextmanager
def frame_stream(
    latents: torch.Tensor, models: SonicModelSet, settings: GenerationSettings, plan: ExecutionPlan,
    output: OutputFormat, placer: ModelPlacer, device: torch.device, hooks: RunHooks,
    previous_frame: torch.Tensor | None = None,
) -> Iterator[Iterator[torch.Tensor]]:
    """Stages decode and interpolation as one stream of [3, H, W] frames in [0, 1] on the CPU, with the VAE
    (and RIFE) placed for as long as the `with` block runs.

    With `plan.overlap_decode` (and a midpoint to compute) decode runs on its own thread beside interpolation;
    leaving the block stops it before the models leave the device. `previous_frame` (a frame already shown,
    e.g. the end of the previous segment) goes first into the interpolation, so the stream starts with it and
    its midpoint to the first decoded frame.
    """

    def decoding() -> Iterator[torch.Tensor]:
        return decode_stream(
            latents, vae_chunk_decoder(models.vae), chunk_size=plan.decode_chunk, device=device,
            dtype=plan.torch_dtype, on_chunk=lambda done, total: hooks.check_cancel(),
            on_downgrade=lambda old, new: hooks.on_adjustment("decode_chunk", {
                "lever": f"decode_chunk: {old}→{new} (out of memory in decode)", "from": old, "to": new}),
        )

    with decoding_models(placer, models), contextlib.ExitStack() as running:
        switcher = StageSwitcher(hooks.observer)
        running.callback(switcher.close)
        decoded: Iterable[torch.Tensor]
        if plan.overlap_decode and output.mode != "none":
            background = BackgroundStream(decoding, stage="decode", observer=hooks.observer, device=device)
            running.callback(background.close)  # before the models are moved off the device
            decoded = staged(switcher, None, background)  # waiting for decode is no stage's time here
        else:
            decoded = staged(switcher, "decode", decoding())
        if settings.smooth_motion > 0:
            decoded = staged(switcher, "interpolation", smooth_motion(decoded, settings.smooth_motion))
        if previous_frame is not None:
            decoded = itertools.chain((previous_frame,), decoded)
        yield staged(switcher, "interpolation", interpolate_stream(decoded, output.mode, output.midpoint,
                                                                   device=device))


def stage_seconds(hooks: RunHooks) -> dict[str, float]:
    observer = hooks.observer
    return dict(getattr(observer, "seconds", None) or observer.stage_seconds())


def audio_track(audio: LoadedAudio) -> tuple[np.ndarray, int]:
    return audio.original_waveform, audio.original_sample_rate


def mouth_meter(settings: GenerationSettings, reference: PreparedReference, output: OutputFormat
                ) -> MouthMotionMeter | None:
    if not settings.lip_sync_correction or reference.face_box_resized is None:
        return None
    return MouthMotionMeter(mouth_box_from_face(reference.face_box_resized, output.width, output.height))


def _encode_reference(
    models: SonicModelSet, reference: PreparedReference, placer: ModelPlacer, device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CLIP image embeds (1,1,D); reference latent (scaled, 4,h,w); conditioning latent (unscaled, 4,h,w)."""
    with torch.no_grad():
        with placer.place("image_encoder", models.image_encoder):
            encoder_dtype = next(models.image_encoder.parameters()).dtype
            pixels = reference.clip_pixels.to(device, encoder_dtype)
            clip_embeds = models.image_encoder(pixels).image_embeds.float().reshape(1, 1, -1).cpu()
        with placer.place("vae", models.vae):
            vae_dtype = next(models.vae.parameters()).dtype
            image = reference.reference.unsqueeze(0).to(device, vae_dtype)
            # The posterior's mean is also its mode: one encode gives both latents the reference uses.
            mean = models.vae.encode(image).latent_dist.mean.float()[0].cpu()
    return clip_embeds, mean * SVD_LATENT_SCALE, mean


def _encode(
    frames: Iterable[torch.Tensor], output_path: Path, output: OutputFormat, audio: LoadedAudio,
    settings: GenerationSettings, reference: PreparedReference, observer: StageObserver, collect_frames: bool,
) -> tuple[VideoFileInfo, torch.Tensor | None, float | None]:
    """Stage encode, on the writer's own thread (it overlaps decode and interpolation); the lip-sync meter and
    the collected frames are read here, in the producer's thread."""
    meter = mouth_meter(settings, reference, output)
    collected: list[np.ndarray] = []
    # With lip-sync correction the audio is muxed after the offset is known, so write the video alone first.
    writer_audio = None if meter is not None else audio_track(audio)
    video_path = output_path.with_name(output_path.stem + ".video" + output_path.suffix) if meter else output_path
    with BackgroundVideoWriter(StreamingVideoWriter(video_path, output.width, output.height, output.fps,
                                                    audio=writer_audio), observer=observer) as writer:
        for frame in frames:
            writer.write(frame)
            if meter is not None:
                meter.update(frame)
            if collect_frames:
                collected.append((frame.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy())
        video = writer.close()
    offset = None
    if meter is not None:
        with observer.stage("encode"):
            estimate = measure_av_offset(meter.energies, audio.waveform, float(output.fps))
        offset = estimate.correction_s()
        try:
            video = stitch_videos([video_path], output_path, audio_track(audio), audio_offset_s=offset)
        finally:  # a failed mux (a full disk) must not leave the video-only file in the output folder
            video_path.unlink(missing_ok=True)
    frames_tensor = torch.from_numpy(np.stack(collected)).float() / 255.0 if collected else None
    return video, frames_tensor, offset
