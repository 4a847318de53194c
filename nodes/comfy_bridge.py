"""Everything the pack asks of ComfyUI itself, in one module: folders, devices, free memory, progress, cancel,
model management, and the per-server services object. Node modules import from here, never from `comfy` directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import comfy.model_management as model_management
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from torch import nn

from ..sonic_guard.errors import BadInputError, CheckpointError
from ..sonic_guard.inputs.safe_paths import resolve_user_path
from ..sonic_guard.memory.free_memory_cap import capped_free_memory, free_memory_cap
from ..sonic_guard.memory.plan import MemoryEstimate
from ..sonic_guard.memory.room import (
    DeviceRoom,
    Eviction,
    HeldModel,
    device_room,
    evictions_between,
    stage_activation_bytes,
    stage_room_bytes,
)
from ..sonic_guard.models.checkpoint_paths import SINGLE_FILE_SUFFIXES, WhisperSearch, find_whisper
from ..sonic_guard.models.weight_streaming import stream_weights

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


AUDIO_ENCODERS_FOLDER = "audio_encoders"  # ComfyUI's models/audio_encoders (and extra_model_paths.yaml entries)


def audio_encoder_folders() -> list[Path]:
    """Every folder ComfyUI registers for audio encoders; none on a host that predates the name."""
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(AUDIO_ENCODERS_FOLDER)]
    except KeyError:
        return []


def whisper_search(root: Path) -> WhisperSearch:
    """Whisper-tiny beside the Sonic files, in ComfyUI's audio encoders folders, or in the Hugging Face cache."""
    return find_whisper(root, audio_encoder_folders())


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


FROM_MODEL_FOLDER = "from the model folder"


def svd_checkpoint_options() -> list[str]:
    """The loader's SVD source: the model folder's diffusers SVD, or a file of models/checkpoints (svd_xt first)."""
    names = folder_paths.get_filename_list("checkpoints")
    svd_first = sorted(names, key=lambda name: ("svd" not in name.lower(), name.lower()))
    return [FROM_MODEL_FOLDER, *(n for n in svd_first if n.lower().endswith(SINGLE_FILE_SUFFIXES))]


def resolve_svd_checkpoint(name: str) -> Path | None:
    """None for the model folder's own SVD; else the checkpoint's path (ComfyUI resolves it inside its folders)."""
    if name == FROM_MODEL_FOLDER:
        return None
    path = folder_paths.get_full_path("checkpoints", name)
    if path is None:
        raise CheckpointError(
            problem=f"the SVD checkpoint '{name}' is not in models/checkpoints",
            expected="svd_xt.safetensors or svd_xt_1_1.safetensors in ComfyUI's checkpoints folder",
            fix=f"put the file there and press R in the editor, or choose '{FROM_MODEL_FOLDER}'",
        )
    return Path(path)


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


def held_models(device: torch.device, ours: Iterable[comfy.model_patcher.ModelPatcher] = ()) -> list[HeldModel]:
    """The models ComfyUI's model management holds on `device`, with their loaded bytes."""
    own = {id(patcher) for patcher in ours}
    held = []
    for loaded in model_management.current_loaded_models:
        patcher = loaded.model
        if patcher is None or loaded.device != device:
            continue
        inner = getattr(patcher.model, "inner", patcher.model)  # our PatchedModule holder: name what it holds
        held.append(HeldModel(id(loaded), type(inner).__name__, int(loaded.model_loaded_memory()),
                              ours=id(patcher) in own or isinstance(patcher.model, PatchedModule)))
    return held


def guard_free_bytes(device: torch.device) -> int:
    """ComfyUI's own figure (device-free plus torch's idle cache), lowered to SONIC_GUARD_FREE_MEMORY_BYTES less
    what loaded models hold, when that cap is set (a GPU shared with other programs)."""
    loaded = sum(model.loaded_bytes for model in held_models(device))
    return capped_free_memory(int(model_management.get_free_memory(device)), loaded_bytes=loaded, device=device)


def room_on(device: torch.device) -> DeviceRoom:
    """Free + evictable memory, as the badge, the Plan node and the generator plan with."""
    return device_room(guard_free_bytes(device), held_models(device), device_type=device.type,
                       cap_bytes=free_memory_cap(device=device))


def evict_for(required_free: int, device: torch.device, keep: Iterable[comfy.model_patcher.ModelPatcher]) -> None:
    """Unload other models, least recently loaded first (ComfyUI's order), until the guard's free figure covers
    `required_free`. ComfyUI's own `free_memory` stops at the device's figure and skips the CPU; the guard's
    figure can be lower (the cap), so the same unloading is done here against it."""
    keep_ids = {id(patcher) for patcher in keep}
    unloaded = False
    for loaded in list(reversed(model_management.current_loaded_models)):
        if guard_free_bytes(device) >= required_free:
            break
        patcher = loaded.model
        if patcher is None or loaded.device != device or id(patcher) in keep_ids or loaded.is_dead():
            continue
        if loaded.model_loaded_memory() <= 0:
            continue
        logger.info("evicting %s to make room for Sonic", type(patcher.model).__name__)
        if loaded.model_unload():
            model_management.current_loaded_models.remove(loaded)
            unloaded = True
    if unloaded:
        model_management.soft_empty_cache()


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
    """Places a model for a stage through ComfyUI's model management, asking for the room the memory plan
    predicts for that stage (weights + activations), so other models are evicted before anything is made
    smaller; every eviction is passed to `on_evicted`. With `offload_idle` the model leaves the device after
    its stage (a quality-neutral memory lever)."""

    patchers: dict[str, comfy.model_patcher.ModelPatcher]
    estimate: MemoryEstimate | None = None
    offload_idle: bool = True
    stream_unet: bool = False
    on_evicted: Callable[[Eviction], None] = lambda eviction: None
    evictions: list[Eviction] = field(default_factory=list)

    def _make_room(self, name: str, device: torch.device) -> int:
        """Evict for this stage; returns ComfyUI's `memory_required` (the stage's activations)."""
        if self.estimate is None:
            return 0
        ours = list(self.patchers.values())
        held_by_us = sum(model.loaded_bytes for model in held_models(device, ours) if model.ours)
        evict_for(stage_room_bytes(self.estimate, name) - held_by_us, device, ours)
        return stage_activation_bytes(self.estimate, name)

    def _placed(self, load: Callable[[], None], device: torch.device, name: str) -> None:
        before = held_models(device, self.patchers.values())
        load()
        for eviction in evictions_between(before, held_models(device, self.patchers.values())):
            self.evictions.append(eviction)
            self.on_evicted(eviction)

    @contextlib.contextmanager
    def place(self, name: str, module: nn.Module) -> Iterator[nn.Module]:
        patcher = self.patchers.get(name)
        if name == "unet" and self.stream_unet and patcher is not None:
            # Weight offload: ComfyUI makes room for the largest block plus activations; blocks stream in.
            device = patcher.load_device

            def make_room() -> None:
                model_management.free_memory(self._make_room(name, device), device)

            self._placed(make_room, device, name)
            with stream_weights(module, patcher.load_device, patcher.offload_device):
                yield module
            return
        if patcher is None or patcher.model.inner is not module:
            raise RuntimeError(f"model '{name}' was not wrapped for ComfyUI at load time")

        def load() -> None:
            required = self._make_room(name, patcher.load_device)
            model_management.load_models_gpu([patcher], memory_required=required, force_full_load=True)

        self._placed(load, patcher.load_device, name)
        try:
            yield module
        finally:
            if self.offload_idle and patcher.load_device.type != "cpu":
                patcher.detach()
