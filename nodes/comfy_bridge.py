"""Everything the pack asks of ComfyUI itself, in one module: folders, devices, free memory, progress, cancel,
model management, and the per-server services object. Node modules import from here, never from `comfy` directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management as model_management
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from torch import nn

from ..sonic_guard.errors import BadInputError, CheckpointError
from ..sonic_guard.models.weight_streaming import stream_weights
from ..sonic_guard.paths import resolve_user_path
from .free_memory_override import capped_free_memory

logger = logging.getLogger(__name__)

SONIC_FOLDER = "sonic"
# Marker file that makes a folder a Sonic model root (the official layout).
ROOT_MARKER = Path("Sonic") / "unet.pth"


def register_model_folders() -> None:
    """Register `models/sonic` (and any `sonic:` entry of extra_model_paths.yaml, which ComfyUI reads itself)."""
    default = os.path.join(folder_paths.models_dir, SONIC_FOLDER)
    folder_paths.add_model_folder_path(SONIC_FOLDER, default, is_default=True)


def sonic_search_folders() -> list[Path]:
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(SONIC_FOLDER)]
    except KeyError:
        return []


def list_model_roots() -> list[str]:
    """Names of folders holding the official layout: a registered sonic folder itself, or a subfolder of one."""
    names: list[str] = []
    for folder in sonic_search_folders():
        if (folder / ROOT_MARKER).exists():
            names.append(".")
        if folder.is_dir():
            for child in sorted(folder.iterdir()):
                if child.is_dir() and (child / ROOT_MARKER).exists():
                    names.append(child.name)
    return sorted(dict.fromkeys(names)) or ["(no Sonic models found)"]


def resolve_model_root(name: str) -> Path:
    folders = sonic_search_folders()
    for folder in folders:
        candidate = (folder / name).resolve()
        if candidate.parent not in {folder.resolve(), folder.resolve().parent} and name != ".":
            continue
        if (candidate / ROOT_MARKER).exists():
            return candidate
    searched = ", ".join(str(f) for f in folders) or "(no sonic folder registered)"
    raise CheckpointError(
        problem=f"no Sonic model folder named '{name}' holds {ROOT_MARKER}",
        expected=f"a folder inside {searched} with the official layout (Sonic/unet.pth, Sonic/audio2token.pth, "
        "Sonic/audio2bucket.pth, whisper-tiny/, stable-video-diffusion-img2vid-xt/, optional RIFE/flownet.pkl)",
        fix="download the weights (README, 'Models') into models/sonic/, then press R in the editor to refresh",
    )


def input_directory() -> Path:
    return Path(folder_paths.get_input_directory())


def input_files(extensions: tuple[str, ...]) -> list[str]:
    """Files in ComfyUI's input folder (sub-folders too) with these extensions, as the loaders' combo lists them."""
    root = input_directory()
    if not root.is_dir():
        return []
    names = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return sorted(name for name in names if name.lower().endswith(extensions))


def input_file(name: str) -> Path:
    """A loader's file, confined to the input folder (`..`, absolute paths and escaping links are refused)."""
    return resolve_user_path(name, input_directory())


def validate_input_file(name: str) -> bool | str:
    """A loader's `validate_inputs`: True, or the refusal ComfyUI shows before the run."""
    try:
        input_file(name)
    except Exception as error:  # noqa: BLE001 - ComfyUI shows this string as the validation error
        return str(error)
    return True


def output_directory() -> Path:
    return Path(folder_paths.get_output_directory())


def user_directory() -> Path:
    return Path(folder_paths.get_user_directory())


def output_path_for(prefix: str, suffix: str = ".mp4") -> tuple[Path, str, str]:
    """A fresh numbered output file (full path, file name, subfolder) the way ComfyUI's savers name them."""
    if not prefix or "\x00" in prefix or os.path.isabs(prefix) or ".." in Path(prefix).parts:
        raise BadInputError(
            problem=f"filename_prefix '{prefix}' is not a plain name",
            expected="a name or sub/folder/name inside ComfyUI's output folder",
            fix="use something like 'sonic/talking'",
        )
    full_dir, filename, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, str(output_directory()))
    os.makedirs(full_dir, exist_ok=True)
    name = f"{filename}_{counter:05}{suffix}"
    return Path(full_dir) / name, name, subfolder


def compute_device() -> torch.device:
    return model_management.get_torch_device()


def free_memory_bytes(device: torch.device) -> int:
    """ComfyUI's own figure (device-free plus torch's idle cache), lowered to SONIC_GUARD_FREE_MEMORY_BYTES when
    that is set (a GPU shared with other programs)."""
    return capped_free_memory(int(model_management.get_free_memory(device)))


def is_oom(error: BaseException) -> bool:
    return isinstance(error, model_management.OOM_EXCEPTION) and not isinstance(error, BadInputError) and (
        isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()
    )


def release_memory(device: torch.device) -> None:
    """After an OOM: let ComfyUI drop what it can, then return the allocator's cache."""
    model_management.free_memory(1 << 60, device)
    model_management.soft_empty_cache(force=True)


def check_interrupt() -> None:
    model_management.throw_exception_if_processing_interrupted()


def progress_bar(total: int, node_id: str | None = None) -> comfy.utils.ProgressBar:
    return comfy.utils.ProgressBar(total, node_id=node_id)


class PatchedModule(nn.Module):
    """A plain holder for one of our models: ModelPatcher writes attributes such as `device` onto the model it
    manages, which diffusers and transformers models expose as read-only properties."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner


def make_patcher(module: nn.Module, device: torch.device) -> comfy.model_patcher.ModelPatcher:
    """Wrap a model once, at load time, so ComfyUI's model management can load and evict it."""
    return comfy.model_patcher.ModelPatcher(
        PatchedModule(module), load_device=device, offload_device=model_management.unet_offload_device()
    )


@dataclass
class ComfyModelPlacer:
    """Places a model for a stage through ComfyUI's model management, so other models are evicted to make room
    (including the activations the memory plan predicts) and ours can be evicted later. With `offload_idle`
    the model leaves the device after its stage (a quality-neutral memory lever)."""

    patchers: dict[str, comfy.model_patcher.ModelPatcher]
    offload_idle: bool = True
    stream_unet: bool = False
    stage_activation_bytes: int = 0

    @contextlib.contextmanager
    def place(self, name: str, module: nn.Module) -> Iterator[nn.Module]:
        patcher = self.patchers.get(name)
        if name == "unet" and self.stream_unet and patcher is not None:
            # Weight offload: ComfyUI makes room for the largest block plus activations; blocks stream in.
            model_management.free_memory(self.stage_activation_bytes, patcher.load_device)
            with stream_weights(module, patcher.load_device, patcher.offload_device):
                yield module
            return
        if patcher is None or patcher.model.inner is not module:
            raise RuntimeError(f"model '{name}' was not wrapped for ComfyUI at load time")
        model_management.load_models_gpu(
            [patcher], memory_required=self.stage_activation_bytes, force_full_load=True
        )
        try:
            yield module
        finally:
            if self.offload_idle and patcher.load_device.type != "cpu":
                patcher.detach()
