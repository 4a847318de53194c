"""One Sonic generation, top-down: audio -> face -> features -> sampler windows -> decode -> interpolate
-> video.

Memory by design: only one UNet window, one decode chunk and one frame pair are on the device at a time;
the whole-clip latents (a few KiB per frame) live on the CPU; decoded frames are encoded as they arrive.
The memory plan (`ExecutionPlan`, decided by `memory.planner`) says which levers are on; this module
only executes it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .audio_input import LoadedAudio
from .decode import SVD_LATENT_SCALE, decode_stream, vae_chunk_decoder
from .denoiser import ClipConditioning, compute_frame_buckets, make_denoise_window
from .features import extract_audio_features
from .image_prep import PreparedReference
from .interpolate import choose_mode, frames_for_duration, interpolate_stream, output_fps, pad_to_frame_count
from .lipsync import MouthMotionMeter, measure_av_offset, mouth_box_from_face
from .memory.plan import ExecutionPlan
from .models.checkpoints import SonicModelSet
from .runtime import DevicePlacer, ModelPlacer, RunHooks, StageSwitcher, staged
from .sampler import sample_latents
from .segments import stitch_videos
from .settings import GenerationSettings
from .smoothing import smooth_motion
from .video_writer import StreamingVideoWriter, VideoFileInfo

logger = logging.getLogger(__name__)

GENERATED_FPS = 12.5


@dataclass
class GenerationResult:
    video: VideoFileInfo
    fps: Fraction
    frames: torch.Tensor | None  # [T,H,W,3] float in [0,1], only when asked for (costs host RAM)
    notes: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    av_offset_s: float | None = None


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
    observer = hooks.observer
    placer = placer or DevicePlacer(
        device, offload_idle=plan.offload_idle_models, stream_unet=plan.unet_weight_offload
    )
    dtype = plan.torch_dtype
    notes: list[str] = list(reference.warnings)

    with observer.stage("preprocess"):
        clip_embeds, reference_latent, conditioning_latent = _encode_reference(
            models, reference, placer, device, dtype
        )
    hooks.check_cancel()

    with observer.stage("audio_features"):
        with placer.place("whisper_encoder", models.whisper_encoder):
            features = extract_audio_features(
                audio.waveform, models.whisper_encoder, models.feature_extractor, device=device
            )
        with placer.place("motion_bucket_predictor", models.motion_bucket_predictor):
            buckets = compute_frame_buckets(
                models.motion_bucket_predictor, features, clip_embeds, device=device
            )
    num_frames = features.num_generated_frames
    hooks.check_cancel()

    with observer.stage("sampling"), placer.place("unet", models.unet), placer.place(
        "audio_token_projector", models.audio_token_projector
    ):
        models.unet.set_feed_forward_chunking(plan.ff_chunk)
        models.unet.ip_audio_scale = settings.ip_audio_scale
        conditioning = ClipConditioning(
            reference_latent=reference_latent,
            conditioning_latent=conditioning_latent,
            clip_embeds=clip_embeds,
            face_mask=reference.face_mask,
            frame_buckets=buckets * torch.tensor([settings.motion_scale, 1.0]),
            features=features,
        )
        denoise = make_denoise_window(
            models.unet, models.audio_token_projector, conditioning, device=device, dtype=dtype,
            cfg_batch=plan.cfg_batch, dynamic_scale=settings.dynamic_scale,
        )
        windows_per_step = -(-num_frames // 25)
        total = windows_per_step * plan.inference_steps

        def on_window(done: int, _total: int) -> None:
            hooks.progress(done, total)
            hooks.check_cancel()

        latents = sample_latents(
            reference_latent.cpu().float(), num_frames, plan.inference_steps, denoise, seed=settings.seed,
            on_window=on_window,
        )

    rife_midpoint = models.rife.midpoint if models.rife is not None else None
    mode = choose_mode(settings.interpolation, rife_midpoint, settings.interpolation_fallback)
    if mode.note:
        notes.append(mode.note)
    fps = output_fps(mode.mode)
    target_frames = frames_for_duration(audio.duration_s, fps)
    height, width = reference.reference.shape[-2:]

    with placer.place("vae", models.vae), _maybe_place(placer, "rife", models.rife):
        switcher = StageSwitcher(observer)
        try:
            decoded = staged(switcher, "decode", decode_stream(
                latents, vae_chunk_decoder(models.vae), chunk_size=plan.decode_chunk, device=device,
                dtype=dtype, on_chunk=lambda done, total: hooks.check_cancel(),
            ))
            if settings.smooth_motion > 0:
                decoded = staged(switcher, "interpolation", smooth_motion(decoded, settings.smooth_motion))
            frames = staged(switcher, "interpolation", interpolate_stream(
                decoded, mode.mode, rife_midpoint, device=device
            ))
            video, collected, offset = _encode(
                pad_to_frame_count(frames, target_frames), output_path, width, height, fps, audio, settings,
                reference, switcher, collect_frames,
            )
        finally:
            switcher.close()
    if offset is not None:
        notes.append(f"lip sync: measured audio-video offset {offset:+.3f} s; audio shifted to cancel it")
    return GenerationResult(
        video=video, fps=fps, frames=collected, notes=notes,
        stage_seconds=dict(getattr(observer, "seconds", None) or observer.stage_seconds()),
        av_offset_s=offset,
    )


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


def _maybe_place(placer: ModelPlacer, name: str, module: torch.nn.Module | None):
    import contextlib

    return placer.place(name, module) if module is not None else contextlib.nullcontext()


def _encode(
    frames: Iterable[torch.Tensor], output_path: Path, width: int, height: int, fps: Fraction,
    audio: LoadedAudio, settings: GenerationSettings, reference: PreparedReference, switcher: StageSwitcher,
    collect_frames: bool,
) -> tuple[VideoFileInfo, torch.Tensor | None, float | None]:
    audio_track = (audio.original_waveform, audio.original_sample_rate)
    meter = (
        MouthMotionMeter(mouth_box_from_face(reference.face_box_resized, width, height))
        if settings.lip_sync_correction and reference.face_box_resized is not None
        else None
    )
    collected: list[np.ndarray] = []
    # With lip-sync correction the audio is muxed after the offset is known, so write the video alone first.
    writer_audio = None if meter is not None else audio_track
    video_path = output_path.with_name(output_path.stem + ".video" + output_path.suffix) if meter else output_path
    with StreamingVideoWriter(video_path, width, height, fps, audio=writer_audio) as writer:
        for frame in frames:
            switcher.switch("encode")
            writer.write(frame)
            if meter is not None:
                meter.update(frame)
            if collect_frames:
                collected.append((frame.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy())
        video = writer.close()
    offset = None
    if meter is not None:
        switcher.switch("encode")
        estimate = measure_av_offset(meter.energies, audio.waveform, float(fps))
        offset = estimate.correction_s()
        video = stitch_videos([video_path], output_path, audio_track, audio_offset_s=offset)
        video_path.unlink(missing_ok=True)
    frames_tensor = torch.from_numpy(np.stack(collected)).float() / 255.0 if collected else None
    return video, frames_tensor, offset
