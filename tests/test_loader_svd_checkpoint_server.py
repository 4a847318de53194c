"""Through a real ComfyUI server: the loader offers the checkpoints ComfyUI already has as the SVD source (svd
files first) and reads VAE/CLIP vision from the chosen one. The numbers of that path are checked against the
diffusers folder in test_models_svd_single_file; here the wiring: with the small random Sonic model the single
file's ViT-H/14 image encoder (1024 channels) does not fit and is refused with our error, which only happens when
the loader really took the image encoder from the checkpoint."""

from __future__ import annotations

from comfy_host import ComfyServer, execution_error
from hardening_cases import quick_prompt
from hardening_server import run_prompt
from safetensors.torch import save_file


def test_loader_takes_vae_and_clip_from_a_comfyui_checkpoint(comfy_server: ComfyServer) -> None:
    checkpoints = comfy_server.base / "models" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    single = checkpoints / "svd_xt.safetensors"
    other = checkpoints / "another_model.safetensors"
    import torch

    save_file({"first_stage_model.encoder.conv_in.bias": torch.zeros(128)}, str(single))
    save_file({"model.diffusion_model.x": torch.zeros(1)}, str(other))
    try:
        info = comfy_server.get_json("/object_info/SonicGuardModelLoader")["SonicGuardModelLoader"]
        spec = info["input"]["optional"]["svd_checkpoint"]
        options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]  # V3 combos: ("COMBO", {"options": ...})
        assert options[:2] == ["from the model folder", "svd_xt.safetensors"], options
        assert "another_model.safetensors" in options

        prompt = quick_prompt()
        prompt["1"]["inputs"]["svd_checkpoint"] = "svd_xt.safetensors"
        _, answer, history = run_prompt(comfy_server, prompt)
        assert history is not None, answer
        error = execution_error(history)
        assert error is not None and error["exception_type"].endswith("CheckpointError"), error
        # Sized from ViT-H/14's 1024-channel projection, the small model's adapters no longer fit.
        message = error["exception_message"]
        assert "projects to 1024 channels" in message or "should be [1024" in message, message

        # The default stays the model folder's diffusers SVD: the same prompt without the input still runs.
        _, answer, history = run_prompt(comfy_server, quick_prompt())
        assert history is not None and execution_error(history) is None, answer
    finally:
        single.unlink()
        other.unlink()
