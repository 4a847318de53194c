"""The SVD VAE and CLIP image encoder read from ComfyUI's single-file SVD checkpoint (`svd_xt.safetensors`,
`svd_xt_1_1.safetensors` in `models/checkpoints`), the file most ComfyUI users already have for the core SVD
workflows, instead of the diffusers folder.

That file is Stability's original (SGM) layout: the VAE under `first_stage_model.` (LDM names, a temporal
decoder), the OpenCLIP ViT-H/14 image tower under `conditioner.embedders.0.open_clip.model.visual.`, and the SVD
UNet, which Sonic does not use (its UNet is `Sonic/unet.pth`) and which is never read: safetensors reads tensors by
name, so only the ~0.7 B parameters needed leave the disk. One table maps every diffusers/transformers parameter
to its place in the file; the other direction (`write_svd_single_file`) builds such a file from a diffusers
folder, which the tests use to build both layouts from the same random weights and which ComfyUI's own loaders
read as a real SVD checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .configs import CLIP_VIT_H14_CONFIG, SVD_XT_VAE_CONFIG

VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "conditioner.embedders.0.open_clip.model.visual."
UNET_PREFIX = "model.diffusion_model."
_QKV = ("q_proj", "k_proj", "v_proj")


def _quant_conv_identity(key: str, shape: torch.Size) -> torch.Tensor:
    """What the original model implies for diffusers' quant_conv, which it does not have: the identity."""
    return torch.eye(shape[0]).reshape(shape) if key.endswith("weight") else torch.zeros(shape)


# --- the VAE: diffusers AutoencoderKLTemporalDecoder name -> LDM name ---------------------------------------
# Renames that need no index arithmetic (the rest is in vae_key_in_file).
_VAE_RULES: tuple[tuple[str, str], ...] = (
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.conv_shortcut\.", r"encoder.down.\1.block.\2.nin_shortcut."),
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2."),
    (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
    (r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
    (r"^decoder\.time_conv_out\.", "decoder.conv_out.time_mix_conv."),
)
_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_TEMPORAL = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3"}


def _decoder_resnet(block: str, rest: str) -> str:
    """`<block>` is the LDM resnet path (`decoder.up.3.block.0` or `decoder.mid.block_1`)."""
    if rest.startswith("spatial_res_block."):
        rest = rest.removeprefix("spatial_res_block.").replace("conv_shortcut.", "nin_shortcut.")
        return f"{block}.{rest}"
    if rest.startswith("temporal_res_block."):
        layer, _, kind = rest.removeprefix("temporal_res_block.").partition(".")
        return f"{block}.time_stack.{_TEMPORAL[layer]}.{kind}"
    if rest == "time_mixer.mix_factor":
        return f"{block}.mix_factor"
    raise KeyError(rest)


def vae_key_in_file(key: str, up_blocks: int = 4) -> str | None:
    """Where a diffusers VAE parameter lives in the single file (without the prefix); None for `quant_conv`,
    which the original model does not have (it is the identity there)."""
    if key.startswith("quant_conv."):
        return None
    attention = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", key)
    if attention:
        return f"{attention[1]}.mid.attn_1.{_ATTENTION[attention[2]]}.{attention[3]}"
    mid = re.match(r"^encoder\.mid_block\.resnets\.(\d+)\.(.+)$", key)
    if mid:
        return f"encoder.mid.block_{int(mid[1]) + 1}.{mid[2]}"
    mid = re.match(r"^decoder\.mid_block\.resnets\.(\d+)\.(.+)$", key)
    if mid:
        return _decoder_resnet(f"decoder.mid.block_{int(mid[1]) + 1}", mid[2])
    # The LDM decoder counts its up blocks from the lowest resolution's end: diffusers' up_blocks.0 is up.3.
    up = re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key)
    if up:
        return _decoder_resnet(f"decoder.up.{up_blocks - 1 - int(up[1])}.block.{up[2]}", up[3])
    up = re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", key)
    if up:
        return f"decoder.up.{up_blocks - 1 - int(up[1])}.upsample.{up[2]}"
    for pattern, replacement in _VAE_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return key  # conv_in, conv_out, the rest of the norms: same names


def _from_file_vae(key: str, tensor: torch.Tensor) -> torch.Tensor:
    # The LDM attention projections are 1x1 convolutions; diffusers' are linear layers.
    return tensor.reshape(tensor.shape[:2]) if ".mid.attn_1." in key and tensor.ndim == 4 else tensor


# --- the image encoder: transformers CLIPVisionModelWithProjection name -> OpenCLIP name ---------------------
_CLIP_NAMES = {
    "vision_model.embeddings.class_embedding": "class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "positional_embedding",
    "vision_model.pre_layrnorm.weight": "ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "ln_pre.bias",
    "vision_model.post_layernorm.weight": "ln_post.weight",
    "vision_model.post_layernorm.bias": "ln_post.bias",
    "visual_projection.weight": "proj",  # transposed: OpenCLIP multiplies x @ proj
}
_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
               "self_attn.out_proj": "attn.out_proj"}


def clip_key_in_file(key: str) -> tuple[str, int | None]:
    """(OpenCLIP name, slice of in_proj for q/k/v or None) of a transformers CLIP vision parameter."""
    if key in _CLIP_NAMES:
        return _CLIP_NAMES[key], None
    layer = re.match(r"^vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
    if not layer:
        raise KeyError(key)
    index, module, kind = layer[1], layer[2], layer[3]
    if module.startswith("self_attn.") and module.removeprefix("self_attn.") in _QKV:
        return f"transformer.resblocks.{index}.attn.in_proj_{kind}", _QKV.index(module.removeprefix("self_attn."))
    return f"transformer.resblocks.{index}.{_CLIP_LAYER[module]}.{kind}", None


# --- building the modules ---------------------------------------------------------------------------------------
def empty_svd_vae() -> nn.Module:
    from diffusers import AutoencoderKLTemporalDecoder

    kwargs = {**SVD_XT_VAE_CONFIG, "down_block_types": tuple(SVD_XT_VAE_CONFIG["down_block_types"]),
              "block_out_channels": tuple(SVD_XT_VAE_CONFIG["block_out_channels"])}
    with torch.device("meta"):
        return AutoencoderKLTemporalDecoder(**kwargs)


def empty_svd_image_encoder() -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_H14_CONFIG))


def _not_svd(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        problem=f"{path.name} is not a usable SVD img2vid checkpoint: {detail}",
        expected="ComfyUI's single-file Stable Video Diffusion img2vid-xt checkpoint (svd_xt.safetensors or "
        f"svd_xt_1_1.safetensors) holding '{VAE_PREFIX}*' and '{CLIP_PREFIX}*'",
        fix="pick svd_xt.safetensors from models/checkpoints (the file the core SVD workflows use), or leave the "
        "SVD checkpoint input at the Sonic folder's stable-video-diffusion-img2vid-xt/ folder",
    )


def _vae_state(vae: nn.Module, handle: object, path: Path, names: set[str]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for key, param in vae.state_dict().items():
        where = vae_key_in_file(key)
        if where is None:
            state[key] = _quant_conv_identity(key, param.shape)
            continue
        if VAE_PREFIX + where not in names:
            raise _not_svd(path, f"the VAE tensor '{VAE_PREFIX}{where}' is missing")
        state[key] = _from_file_vae(where, handle.get_tensor(VAE_PREFIX + where))
    return state


def _clip_state(clip: nn.Module, handle: object, path: Path, names: set[str]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for key in clip.state_dict():
        where, part = clip_key_in_file(key)
        if CLIP_PREFIX + where not in names:
            raise _not_svd(path, f"the image encoder tensor '{CLIP_PREFIX}{where}' is missing")
        tensor = handle.get_tensor(CLIP_PREFIX + where)
        if part is not None:
            tensor = tensor.chunk(3, dim=0)[part]
        elif where == "proj":
            tensor = tensor.t()
        state[key] = tensor.contiguous()
    return state


def _checked_load(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str,
                  dtype: torch.dtype) -> nn.Module:
    expected = module.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in state.items()
             if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise _not_svd(path, f"{len(wrong)} {what} tensor(s) have other shapes, e.g. {wrong[0]}")
    module.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    _materialise_buffers(module)
    return module.eval()


def _materialise_buffers(module: nn.Module) -> None:
    """Buffers outside the state dict stay on the meta device after `assign=True`; CLIP's position ids are the
    only such buffer here, and are recomputed. Any other would be a silent error, so it is refused."""
    for name, buffer in list(module.named_buffers()):
        if not buffer.is_meta:
            continue
        owner_name, _, leaf = name.rpartition(".")
        if leaf != "position_ids":
            raise RuntimeError(f"buffer {name} of {type(module).__name__} was not loaded")
        ids = torch.arange(buffer.shape[-1]).expand(buffer.shape).clone()
        module.get_submodule(owner_name).register_buffer(leaf, ids, persistent=False)


def load_vae_and_clip_from_single_file(path: Path, dtype: torch.dtype = torch.float32
                                       ) -> tuple[nn.Module, nn.Module]:
    """The SVD VAE (diffusers AutoencoderKLTemporalDecoder) and CLIP image encoder (transformers
    CLIPVisionModelWithProjection) in `dtype`, from a single-file SVD checkpoint; the UNet in it is not read."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(problem=f"the SVD checkpoint {path} does not exist",
                              expected="a file in ComfyUI's models/checkpoints folder",
                              fix="pick an existing svd_xt*.safetensors, or refresh the node (R) after moving it")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            names = set(handle.keys())
            if not any(n.startswith(VAE_PREFIX) for n in names) or not any(n.startswith(CLIP_PREFIX) for n in names):
                kind = "an SD/SDXL checkpoint" if any(n.startswith("cond_stage_model.") for n in names) else \
                    "a file without them"
                raise _not_svd(path, f"it has no '{VAE_PREFIX}' VAE or no '{CLIP_PREFIX}' image encoder ({kind})")
            vae, clip = empty_svd_vae(), empty_svd_image_encoder()
            vae_state = _vae_state(vae, handle, path, names)
            clip_state = _clip_state(clip, handle, path, names)
    except SafetensorError as error:
        raise _not_svd(path, f"safetensors cannot read it ({error}); it may be truncated") from error
    return (_checked_load(vae, vae_state, path, "VAE", dtype),
            _checked_load(clip, clip_state, path, "image encoder", dtype))


# --- the other direction: a single file from diffusers modules --------------------------------------------------
def single_file_state(vae: nn.Module, image_encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The `first_stage_model.` and `conditioner...visual.` tensors of an SVD single file for these modules.

    Refuses a VAE whose quant_conv is not the identity: the original layout has no such layer."""
    state: dict[str, torch.Tensor] = {}
    for key, tensor in vae.state_dict().items():
        where = vae_key_in_file(key)
        if where is None:
            if not torch.equal(tensor.float().cpu(), _quant_conv_identity(key, tensor.shape)):
                raise ValueError(f"{key} is not the identity; the SVD single-file layout cannot hold it")
            continue
        if ".mid.attn_1." in where and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        state[VAE_PREFIX + where] = tensor.contiguous()
    pieces: dict[str, list[torch.Tensor | None]] = {}
    for key, tensor in image_encoder.state_dict().items():
        where, part = clip_key_in_file(key)
        if part is None:
            state[CLIP_PREFIX + where] = (tensor.t() if where == "proj" else tensor).contiguous()
        else:
            pieces.setdefault(where, [None, None, None])[part] = tensor
    for where, parts in pieces.items():
        state[CLIP_PREFIX + where] = torch.cat([p for p in parts if p is not None], dim=0).contiguous()
    return state


def write_svd_single_file(vae: nn.Module, image_encoder: nn.Module, target: Path,
                          unet_state: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write an SVD single-file checkpoint (UNet tensors under `model.diffusion_model.` when given)."""
    from safetensors.torch import save_file

    state = single_file_state(vae, image_encoder)
    if unet_state:
        state.update({UNET_PREFIX + k: v.contiguous() for k, v in unet_state.items()})
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    save_file(state, str(partial))
    partial.replace(target)
    return target
