"""Tiny model set -> checkpoint loader -> forward, and every kind of wrong file refused with a useful message."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from sonic_guard.errors import CheckpointError
from sonic_guard.models.checkpoints import ModelPaths, inspect_model_files, load_sonic_models
from sonic_guard.models.configs import TINY_CROSS_ATTENTION_DIM, TINY_WHISPER_DIM
from sonic_guard.models.tiny import write_tiny_model_set


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    write_tiny_model_set(root, seed=0)
    return root


@pytest.fixture()
def broken_root(tiny_root: Path, tmp_path: Path) -> Path:
    """A private copy of the Sonic/ and RIFE/ files (to break), with links to the unchanged HF folders."""
    root = tmp_path / "ckpt"
    root.mkdir()
    shutil.copytree(tiny_root / "Sonic", root / "Sonic")
    shutil.copytree(tiny_root / "RIFE", root / "RIFE")
    for name in ("stable-video-diffusion-img2vid-xt", "whisper-tiny"):
        (root / name).symlink_to(tiny_root / name, target_is_directory=True)
    return root


def test_tiny_set_loads_and_runs(tiny_root: Path):
    models = load_sonic_models(tiny_root)
    assert models.rife is not None and models.face_detector_path is None
    assert models.config["cross_attention_dim"] == TINY_CROSS_ATTENTION_DIM
    assert models.config["whisper_d_model"] == TINY_WHISPER_DIM
    assert models.config["scheduler_config"]["prediction_type"] == "v_prediction"
    assert all(p.device.type == "cpu" and not p.is_meta for p in models.unet.parameters())
    batch, frames = 3, 25
    with torch.no_grad():
        hidden = models.whisper_encoder(torch.randn(1, 80, 3000), output_hidden_states=True).hidden_states
        assert len(hidden) == 5 and hidden[0].shape == (1, 1500, TINY_WHISPER_DIM)
        tokens = models.audio_token_projector(torch.randn(batch, frames, 10, 5, TINY_WHISPER_DIM))
        clip = models.image_encoder(torch.randn(1, 3, 224, 224)).image_embeds[:, None].expand(batch, 1, -1)
        raw = models.motion_bucket_predictor(torch.randn(batch, frames, 50, 1, TINY_WHISPER_DIM), clip)
        out = models.unet(torch.randn(batch, frames, 8, 8, 8), 0.3, clip, tokens,
                          torch.tensor([[12.5, 16.0, 16.0]] * batch), torch.ones(1, 1, 64, 64))
        latents = models.vae.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latent_dist.mode()
        frames_out = models.vae.decode(latents.repeat(2, 1, 1, 1), num_frames=2).sample
        middle = models.rife.midpoint(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    assert tokens.shape == (batch, frames, 32, TINY_CROSS_ATTENTION_DIM)
    assert raw.shape == (batch, frames, 2, 1)
    assert out.shape == (batch, frames, 4, 8, 8) and torch.isfinite(out).all()
    assert latents.shape == (1, 4, 8, 8) and frames_out.shape == (2, 3, 64, 64)
    assert middle.shape == (1, 3, 64, 64)


def test_tiny_set_is_deterministic(tiny_root: Path, tmp_path: Path):
    again = write_tiny_model_set(tmp_path / "again", seed=0)
    first = torch.load(tiny_root / "Sonic" / "unet.pth", weights_only=True)
    second = torch.load(again.unet, weights_only=True)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    flow = torch.load(again.rife, weights_only=True)
    assert len(flow) == 160 and all(k.startswith("module.") for k in flow)


def test_explicit_paths_and_safetensors(broken_root: Path):
    from safetensors.torch import save_file

    sonic = broken_root / "Sonic"
    save_file(torch.load(sonic / "audio2token.pth", weights_only=True), sonic / "a2t.safetensors")
    paths = ModelPaths(
        unet=sonic / "unet.pth", audio2token=sonic / "a2t.safetensors", audio2bucket=sonic / "audio2bucket.pth",
        svd=broken_root / "stable-video-diffusion-img2vid-xt", whisper=broken_root / "whisper-tiny",
    )
    models = load_sonic_models(paths)
    assert models.rife is None and models.paths is paths


def _refusal(root: Path | ModelPaths) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_sonic_models(root)
    return str(caught.value)


def test_missing_file_names_path_folder_and_download(broken_root: Path):
    (broken_root / "Sonic" / "unet.pth").unlink()
    message = _refusal(broken_root)
    assert "unet.pth" in message and str(broken_root) in message and "LeonJoe13/Sonic" in message


def test_truncated_file_is_refused(broken_root: Path):
    path = broken_root / "Sonic" / "audio2bucket.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = _refusal(broken_root)
    assert "audio2bucket.pth" in message and "truncated or corrupt" in message and "download it again" in message


def test_corrupt_safetensors_is_refused(broken_root: Path):
    path = broken_root / "Sonic" / "audio2token.safetensors"
    path.write_bytes(b"not really a safetensors file")
    paths = dataclasses.replace(ModelPaths.from_root(broken_root), audio2token=path)
    message = _refusal(paths)
    assert "audio2token.safetensors" in message and "truncated or corrupt" in message


def test_wrong_shape_lists_key_and_both_shapes(broken_root: Path):
    path = broken_root / "Sonic" / "audio2token.pth"
    state = torch.load(path, weights_only=True)
    state["proj2.weight"] = torch.zeros(7, 7)
    torch.save(state, path)
    message = _refusal(broken_root)
    assert "audio2token.pth" in message and "proj2.weight is [7, 7] but should be [32, 32]" in message


def test_unexpected_and_missing_keys_are_listed(broken_root: Path):
    path = broken_root / "Sonic" / "unet.pth"
    state = torch.load(path, weights_only=True)
    del state["conv_out.bias"]
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, path)
    message = _refusal(broken_root)
    assert "1 missing key(s): conv_out.bias [4]" in message and "1 unexpected key(s): extra.weight [2]" in message


def test_not_a_state_dict_is_refused(broken_root: Path):
    torch.save([torch.zeros(1)], broken_root / "Sonic" / "audio2token.pth")
    assert "not a state dict" in _refusal(broken_root)


def test_rife_without_module_prefix_is_refused(broken_root: Path):
    path = broken_root / "RIFE" / "flownet.pkl"
    state = torch.load(path, weights_only=True)
    torch.save({k.removeprefix("module."): v for k, v in state.items()}, path)
    message = _refusal(broken_root)
    assert "flownet.pkl" in message and "module.block0" in message


def test_missing_whisper_folder_points_to_openai_whisper_tiny(broken_root: Path):
    (broken_root / "whisper-tiny").unlink()
    message = _refusal(broken_root)
    assert "whisper-tiny" in message and "openai/whisper-tiny" in message


def test_mismatched_svd_folder_is_refused(broken_root: Path, tiny_root: Path):
    paths = dataclasses.replace(ModelPaths.from_root(broken_root), svd=broken_root / "nowhere")
    assert "stabilityai/stable-video-diffusion-img2vid-xt" in _refusal(paths)


def test_inspect_reports_presence_and_sizes_without_loading(broken_root: Path):
    report = inspect_model_files(broken_root)
    by_name = {f.name: f for f in report.files}
    assert report.ok and by_name["unet"].status == "size_differs" and by_name["unet"].size_bytes > 0
    assert by_name["yoloface"].status == "not_configured" or by_name["yoloface"].status == "missing"
    (broken_root / "Sonic" / "audio2bucket.pth").unlink()
    report = inspect_model_files(broken_root)
    assert not report.ok and [f.name for f in report.missing()] == ["audio2bucket"]


def test_truncated_whisper_weights_are_refused(broken_root: Path, tiny_root: Path):
    (broken_root / "whisper-tiny").unlink()
    shutil.copytree(tiny_root / "whisper-tiny", broken_root / "whisper-tiny")
    weights = broken_root / "whisper-tiny" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    message = _refusal(broken_root)
    assert "whisper-tiny" in message and "openai/whisper-tiny" in message


def test_half_precision_small_model_files_load_as_float32(broken_root: Path):
    """fp16 conversions of the adapters and RIFE load as float32: the engine runs the small models in float32."""
    for name in ("Sonic/audio2token.pth", "Sonic/audio2bucket.pth", "RIFE/flownet.pkl"):
        path = broken_root / name
        state = torch.load(path, weights_only=True)
        torch.save({key: value.half() for key, value in state.items()}, path)
    models = load_sonic_models(broken_root)
    for module in (models.audio_token_projector, models.motion_bucket_predictor, models.rife, models.whisper_encoder):
        assert {p.dtype for p in module.parameters()} == {torch.float32}


@pytest.fixture(scope="module")
def fp16_svd_root(tiny_root: Path, tmp_path_factory) -> Path:
    """The tiny set with the VAE and CLIP image encoder stored as SVD-xt ships them: fp16 variant files only."""
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("fp16-svd")
    for name in ("Sonic", "RIFE", "whisper-tiny"):
        (root / name).symlink_to(tiny_root / name, target_is_directory=True)
    source, svd = tiny_root / "stable-video-diffusion-img2vid-xt", root / "stable-video-diffusion-img2vid-xt"
    for name in ("unet", "scheduler"):
        shutil.copytree(source / name, svd / name)
    vae = AutoencoderKLTemporalDecoder.from_pretrained(source / "vae", torch_dtype=torch.float32)
    vae.half().save_pretrained(svd / "vae", variant="fp16")
    clip = CLIPVisionModelWithProjection.from_pretrained(source / "image_encoder", dtype=torch.float32)
    clip.half().save_pretrained(svd / "image_encoder", variant="fp16")
    assert sorted(p.name for p in (svd / "image_encoder").glob("*.safetensors")) == ["model.fp16.safetensors"]
    return root


def _clip_embeds(encoder: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    dtype = next(encoder.parameters()).dtype
    with torch.no_grad():
        return encoder(pixels.to(dtype)).image_embeds.double()


def test_fp16_files_load_in_the_dtype_asked_for(fp16_svd_root: Path):
    from conftest import portrait_rgb
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from sonic_guard.conditioning.reference_image import clip_pixels

    clip_dir = fp16_svd_root / "stable-video-diffusion-img2vid-xt" / "image_encoder"
    stored = load_file(str(clip_dir / "model.fp16.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16}
    # The float32 path the reference's fp32 setting takes: the same fp16 weights, upcast, in a float32 model.
    reference = CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(clip_dir)).float().eval()
    reference.load_state_dict({k: v.float() for k, v in stored.items()}, strict=True)
    pixels = clip_pixels(portrait_rgb())
    expected = _clip_embeds(reference, pixels)

    models = load_sonic_models(fp16_svd_root, with_rife=False)  # float32 unless told otherwise
    for name in ("unet", "vae", "image_encoder", "whisper_encoder", "audio_token_projector"):
        assert {p.dtype for p in getattr(models, name).parameters()} == {torch.float32}, name
    # Measured 0.0 (same weights, same float32 kernels); the fp16 encoder below is 9e-4 off on this set.
    error = float((_clip_embeds(models.image_encoder, pixels) - expected).norm() / expected.norm())
    assert error < 1e-5, error

    # fp16 when asked for (the GPU default); the small models stay float32 as in the reference.
    half = load_sonic_models(fp16_svd_root, with_rife=False, dtype=torch.float16)
    for name in ("unet", "vae", "image_encoder"):
        assert {p.dtype for p in getattr(half, name).parameters()} == {torch.float16}, name
    assert {p.dtype for p in half.whisper_encoder.parameters()} == {torch.float32}
    # What a float32 run got before the dtype was passed: the fp16 encoder, far outside the tolerance.
    half_error = float((_clip_embeds(half.image_encoder, pixels) - expected).norm() / expected.norm())
    assert half_error > 1e-4, half_error
