"""Run in a subprocess by tests/test_models_svd_single_file.py: ComfyUI's own loaders read an SVD single file
(the VAE as comfy.sd.VAE, the image encoder as comfy.clip_vision) and compute what our loader must match.

    python tests/comfy_svd_oracle.py <checkpoint.safetensors> <inputs.pt> <outputs.pt>

ComfyUI is the independent witness of the file's layout: it knows where svd_xt.safetensors keeps each tensor
without our key map. Inputs: `pixels` (N,3,H,W in [-1, 1]), `latents` (T,4,h,w), `clip_pixels` (N,3,224,224,
already normalised). Outputs: `mean` (the encoder's posterior mode), `decoded` (T frames), `image_embeds`.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFYUI = REPO / ".host" / "ComfyUI"


def main(checkpoint: str, inputs: str, outputs: str) -> None:
    sys.path.insert(0, str(COMFYUI))
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.clip_vision
    import comfy.sd
    import torch
    from safetensors.torch import load_file

    state = load_file(checkpoint)
    vae_prefix, clip_prefix = "first_stage_model.", "conditioner.embedders.0.open_clip.model.visual."
    vae = comfy.sd.VAE(sd={k[len(vae_prefix):]: v for k, v in state.items() if k.startswith(vae_prefix)})
    clip = comfy.clip_vision.load_clipvision_from_sd(state, clip_prefix, convert_keys=True)
    data = torch.load(inputs, weights_only=True)
    model = vae.first_stage_model.float()
    with torch.no_grad():
        mean = model.encode(data["pixels"])
        decoded = model.decode(data["latents"])  # the batch is one clip: timesteps defaults to its length
        embeds = clip.model.float()(pixel_values=data["clip_pixels"], intermediate_output=-2)[2]
    torch.save({"mean": mean, "decoded": decoded, "image_embeds": embeds}, outputs)


if __name__ == "__main__":
    main(*sys.argv[1:4])
