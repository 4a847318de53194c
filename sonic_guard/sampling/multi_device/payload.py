"""What a rank needs, as plain data (dicts, tensors, strings), so a worker rebuilds our types with its own
imports instead of unpickling the parent's classes (the parent may have imported the pack under another name)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...conditioning.audio_features import AudioFeatures
from ...memory.plan import ExecutionPlan
from ...models.checkpoint_paths import ModelPaths
from ...settings import GenerationSettings
from ..denoiser import ClipConditioning


@dataclass(frozen=True)
class RankJob:
    """One distributed sampling run; `to_plain` / `from_plain` carry it across the process boundary."""

    model_paths: ModelPaths
    conditioning: ClipConditioning
    settings: GenerationSettings
    plan: ExecutionPlan
    seed: int
    anchor_latents: torch.Tensor | None
    devices: tuple[str, ...]
    threads_per_rank: int
    timeout_s: float

    def to_plain(self) -> dict[str, Any]:
        paths = {f.name: None if getattr(self.model_paths, f.name) is None else str(getattr(self.model_paths, f.name))
                 for f in dataclasses.fields(self.model_paths)}
        c = self.conditioning
        return {
            "model_paths": paths,
            "conditioning": {
                "reference_latent": c.reference_latent, "conditioning_latent": c.conditioning_latent,
                "clip_embeds": c.clip_embeds, "face_mask": c.face_mask, "frame_buckets": c.frame_buckets,
                "multi_layer": c.features.multi_layer, "last_layer": c.features.last_layer,
                "num_frames_25fps": c.features.num_frames_25fps,
            },
            "settings": self.settings.to_dict(),
            "plan": dataclasses.asdict(self.plan),
            "seed": self.seed,
            "anchor_latents": self.anchor_latents,
            "devices": list(self.devices),
            "threads_per_rank": self.threads_per_rank,
            "timeout_s": self.timeout_s,
        }

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> RankJob:
        paths = {name: None if value is None else Path(value) for name, value in plain["model_paths"].items()}
        c = plain["conditioning"]
        features = AudioFeatures(c["multi_layer"], c["last_layer"], c["num_frames_25fps"])
        conditioning = ClipConditioning(
            reference_latent=c["reference_latent"], conditioning_latent=c["conditioning_latent"],
            clip_embeds=c["clip_embeds"], face_mask=c["face_mask"], frame_buckets=c["frame_buckets"],
            features=features,
        )
        plan = plain["plan"]
        return cls(
            model_paths=ModelPaths(**paths), conditioning=conditioning,
            settings=GenerationSettings(**plain["settings"]),
            plan=ExecutionPlan(**{**plan, "levers_applied": tuple(plan["levers_applied"]),
                                  "downgrades": tuple(plan["downgrades"])}),
            seed=plain["seed"], anchor_latents=plain["anchor_latents"], devices=tuple(plain["devices"]),
            threads_per_rank=plain["threads_per_rank"], timeout_s=plain["timeout_s"],
        )
