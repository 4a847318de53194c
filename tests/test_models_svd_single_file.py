"""VAE and CLIP vision from ComfyUI's single-file SVD checkpoint equal the diffusers-folder path.

Full-size random weights are built once and written in both layouts (a diffusers folder, and an SVD single file
as `models/checkpoints/svd_xt.safetensors` holds it). On the CPU in fp32, the CLIP image embeds, the VAE encoder's
mean and one decode chunk of the two paths must agree within 1e-3 relative (the issue's bound; with the same
weights they agree far closer). ComfyUI's own loaders read the same file in a subprocess as the independent
witness that the file really is in the SVD checkpoint layout, and must agree too.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_host import REPO
from PIL import Image

from sonic_guard.errors import CheckpointError
from sonic_guard.models.checkpoints import load_vae_and_clip
from sonic_guard.models.svd_single_file import (
    CLIP_PREFIX,
    VAE_PREFIX,
    empty_svd_image_encoder,
    empty_svd_vae,
    load_vae_and_clip_from_single_file,
    write_svd_single_file,
)

BOUND = 1e-3
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference.double()).abs().max() / reference.double().abs().max())


def _random_modules() -> tuple[torch.nn.Module, torch.nn.Module]:
    """Full-size SVD VAE and CLIP ViT-H/14, random, in fp16 (what the published files hold); quant_conv is the
    identity, as the original model implies."""
    vae, clip = empty_svd_vae(), empty_svd_image_encoder()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for module in (vae, clip):
            module.to_empty(device="cpu")
            for name, tensor in module.state_dict().items():
                # Norm scales near 1 and small weights elsewhere keep 32 random layers in a sane range.
                is_scale = name.endswith("weight") and tensor.ndim == 1
                with torch.no_grad():
                    tensor.copy_(1.0 + 0.1 * torch.randn_like(tensor) if is_scale else 0.02 * torch.randn_like(tensor))
    with torch.no_grad():
        vae.quant_conv.weight.copy_(torch.eye(8).reshape(8, 8, 1, 1))
        vae.quant_conv.bias.zero_()
    return vae.half(), clip.half()


def write_both_layouts(root: Path) -> tuple[Path, Path]:
    """The same random VAE + CLIP as a diffusers folder and as ComfyUI's single file (also used by
    bench/bench_native_models.py)."""
    vae, clip = _random_modules()
    svd = root / "stable-video-diffusion-img2vid-xt"
    vae.save_pretrained(svd / "vae")
    clip.save_pretrained(svd / "image_encoder")
    single = write_svd_single_file(vae, clip, root / "checkpoints" / "svd_xt.safetensors")
    del vae, clip
    gc.collect()
    return svd, single


def comparison_inputs() -> dict[str, torch.Tensor]:
    """A real photo for the encoders and one decode chunk of 3 frames of latents."""
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    small = np.asarray(photo.resize((128, 128), Image.BICUBIC), dtype=np.float32) / 127.5 - 1.0
    clip = (np.asarray(photo.resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    generator = torch.Generator().manual_seed(1)
    return {
        "pixels": torch.from_numpy(small).permute(2, 0, 1)[None].contiguous(),
        "latents": torch.randn(3, 4, 16, 16, generator=generator),
        "clip_pixels": torch.from_numpy(clip.astype(np.float32)).permute(2, 0, 1)[None].contiguous(),
    }


@pytest.fixture(scope="module")
def both_layouts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_both_layouts(tmp_path_factory.mktemp("svd-layouts"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], Path]:
    tensors = comparison_inputs()
    path = tmp_path_factory.mktemp("svd-inputs") / "inputs.pt"
    torch.save(tensors, path)
    return tensors, path


def _outputs(vae: torch.nn.Module, clip: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {
            "mean": vae.encode(tensors["pixels"]).latent_dist.mean,
            "decoded": vae.decode(tensors["latents"], num_frames=tensors["latents"].shape[0]).sample,
            "image_embeds": clip(pixel_values=tensors["clip_pixels"]).image_embeds,
        }


@pytest.fixture(scope="module")
def folder_outputs(both_layouts, inputs) -> dict[str, torch.Tensor]:
    svd, _ = both_layouts
    vae, clip = load_vae_and_clip(svd, svd.parent, torch.float32)
    outputs = _outputs(vae, clip, inputs[0])
    del vae, clip
    gc.collect()
    return outputs


def test_single_file_equals_the_diffusers_folder(both_layouts, inputs, folder_outputs) -> None:
    _, single = both_layouts
    # The loader's own entry point: a .safetensors where the SVD folder would be is read as the single file.
    vae, clip = load_vae_and_clip(single, single.parent, torch.float32)
    assert next(vae.parameters()).dtype == torch.float32 and next(clip.parameters()).dtype == torch.float32
    ours = _outputs(vae, clip, inputs[0])
    del vae, clip
    gc.collect()
    for name, reference in folder_outputs.items():
        assert ours[name].shape == reference.shape, name
        assert relative_error(ours[name], reference) <= BOUND, (name, relative_error(ours[name], reference))


def test_comfyui_reads_the_same_file_to_the_same_numbers(both_layouts, inputs, folder_outputs,
                                                         tmp_path: Path) -> None:
    """ComfyUI's loaders, which know svd_xt.safetensors without our key map, agree: the file is the real layout."""
    _, single = both_layouts
    out = tmp_path / "comfy.pt"
    run = subprocess.run([sys.executable, str(REPO / "tests" / "comfy_svd_oracle.py"), str(single), str(inputs[1]),
                          str(out)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    comfy = torch.load(out, weights_only=True)
    for name, reference in folder_outputs.items():
        assert comfy[name].shape == reference.shape, name
        assert relative_error(comfy[name], reference) <= BOUND, (name, relative_error(comfy[name], reference))


def test_the_presence_report_names_the_single_file(both_layouts, tmp_path: Path) -> None:
    from dataclasses import replace

    from sonic_guard.models.checkpoint_paths import ModelPaths, inspect_model_files

    _, single = both_layouts
    report = inspect_model_files(replace(ModelPaths.from_root(tmp_path), svd=single))
    names = {entry.name: entry for entry in report.files}
    assert names["svd_checkpoint"].status == "ok" and "vae" not in names and "image_encoder" not in names
    missing = inspect_model_files(replace(ModelPaths.from_root(tmp_path), svd=tmp_path / "svd_xt.safetensors"))
    entry = next(e for e in missing.files if e.name == "svd_checkpoint")
    assert entry.status == "missing" and "models/checkpoints" in entry.hint


def test_a_checkpoint_without_svd_parts_is_refused_clearly(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd15 = tmp_path / "v1-5.safetensors"
    save_file({"cond_stage_model.transformer.x": torch.zeros(2), f"{VAE_PREFIX}encoder.conv_in.bias":
               torch.zeros(128)}, str(sd15))
    with pytest.raises(CheckpointError) as error:
        load_vae_and_clip_from_single_file(sd15)
    message = str(error.value)
    assert "v1-5.safetensors" in message and CLIP_PREFIX in message and "svd_xt.safetensors" in message
    assert "Expected:" in message and "Fix:" in message


def test_a_truncated_checkpoint_is_refused_clearly(both_layouts, tmp_path: Path) -> None:
    _, single = both_layouts
    cut = tmp_path / "svd_xt_cut.safetensors"
    with open(single, "rb") as source:
        cut.write_bytes(source.read(4096))
    with pytest.raises(CheckpointError) as error:
        load_vae_and_clip_from_single_file(cut)
    assert "svd_xt_cut.safetensors" in str(error.value) and "Fix:" in str(error.value)
