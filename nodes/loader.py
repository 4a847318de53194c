"""Sonic Model Loader: the official file layout from models/sonic, wrapped for ComfyUI's model management."""

from __future__ import annotations

import logging
from dataclasses import replace

from comfy_api.v0_0_2 import io

from ..sonic_guard.memory.preflight import PRECISIONS, plan_dtype
from ..sonic_guard.models.checkpoint_paths import ModelPaths
from ..sonic_guard.models.checkpoints import load_sonic_models
from . import comfy_bridge, ids
from .model_handle import SonicModelHandle, SonicModelType

logger = logging.getLogger(__name__)
PLACED = ("unet", "vae", "image_encoder", "whisper_encoder", "audio_token_projector", "motion_bucket_predictor",
          "rife")


class ModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=ids.MODEL_LOADER,
            display_name="Sonic Model Loader",
            category=ids.CATEGORY,
            description=(
                "Loads Sonic (unet.pth, or its fp16 conversion unet.fp16.safetensors when present), audio2token.pth, "
                "audio2bucket.pth, whisper-tiny (beside them, in models/audio_encoders, or from the Hugging Face "
                "cache), the SVD-xt VAE and image encoder, and optionally RIFE, from a folder in models/sonic "
                "with the official layout. Weights "
                "load with weights_only=True; a missing or wrong file is named with what was expected. Models "
                "stay on the offload device until a stage needs them."
            ),
            inputs=[
                io.Combo.Input("model_folder", options=comfy_bridge.list_model_roots(),
                               tooltip="A folder in models/sonic that holds Sonic/unet.pth (official layout)."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                               tooltip="UNet, VAE and CLIP precision. auto: fp16 on a GPU, fp32 on the CPU."),
                io.Boolean.Input("load_rife", default=True,
                                 tooltip="Load RIFE/flownet.pkl for 25 fps output (if present)."),
                io.Combo.Input("svd_checkpoint", options=comfy_bridge.svd_checkpoint_options(),
                               default=comfy_bridge.FROM_MODEL_FOLDER, optional=True,
                               tooltip="Where the SVD VAE and image encoder come from: the model folder's "
                               "stable-video-diffusion-img2vid-xt/, or the svd_xt.safetensors you already have "
                               "in models/checkpoints for the core SVD workflows (its UNet is not read)."),
            ],
            outputs=[SonicModelType.Output("sonic_model", display_name="sonic_model",
                                           tooltip="The loaded Sonic model set.")],
        )

    @classmethod
    def execute(cls, model_folder: str, precision: str, load_rife: bool,
                svd_checkpoint: str = comfy_bridge.FROM_MODEL_FOLDER) -> io.NodeOutput:
        root = comfy_bridge.resolve_model_root(model_folder)
        svd_file = comfy_bridge.resolve_svd_checkpoint(svd_checkpoint)
        whisper = comfy_bridge.whisper_search(root)
        paths = ModelPaths.from_root(root, whisper=whisper)
        if svd_file is not None:
            paths = replace(paths, svd=svd_file)
        device = comfy_bridge.compute_device()
        dtype = plan_dtype(precision, device.type)
        # UNet, VAE and CLIP load in the chosen precision; the audio adapters, whisper and RIFE stay fp32.
        models = load_sonic_models(paths, with_rife=load_rife, dtype=dtype, whisper=whisper)
        used = f"UNet from {paths.unet.name}, whisper-tiny from {paths.whisper}"
        notes = [f"UNet read from {paths.unet.name} (the fp16 conversion)"] if paths.unet.suffix != ".pth" else []
        if load_rife and models.rife is None:
            notes.append("RIFE/flownet.pkl not found: no RIFE interpolation (see the generator's rife_fallback)")
        patchers = {
            name: comfy_bridge.make_patcher(module, device)
            for name in PLACED if (module := getattr(models, name)) is not None
        }
        logger.info("Sonic models loaded from %s (%s, %s): %s", root, dtype, device, used)
        handle = SonicModelHandle(models=models, patchers=patchers, device=device, dtype=dtype,
                                  source=model_folder, notes=tuple(notes))
        return io.NodeOutput(handle)
