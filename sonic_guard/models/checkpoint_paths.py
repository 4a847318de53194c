"""Where Sonic's model files live (official layout or explicit paths), and a cheap presence/size report."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

SONIC_HF = "hf download LeonJoe13/Sonic --local-dir <root>  (gives Sonic/, RIFE/, yoloface_v5m.pt)"
SVD_HF = ("hf download stabilityai/stable-video-diffusion-img2vid-xt "
          "--local-dir <root>/stable-video-diffusion-img2vid-xt")
SVD_CHECKPOINT_HINT = ("put svd_xt.safetensors (the core SVD workflows' checkpoint) in ComfyUI/models/checkpoints, "
                       "or choose 'from the model folder' and download " + SVD_HF)
WHISPER_HF = "hf download openai/whisper-tiny --local-dir <root>/whisper-tiny"
WHISPER_REPO = "openai/whisper-tiny"
WHISPER_FOLDER = "whisper-tiny"
# The files a transformers whisper-tiny folder needs: the config, the feature extractor's config, the weights.
WHISPER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
WHISPER_CONFIGS = ("config.json", "preprocessor_config.json")
UNET_PTH = "unet.pth"
UNET_FP16 = "unet.fp16.safetensors"  # written by `python -m sonic_guard.models.convert_unet <model folder>`

SINGLE_FILE_SUFFIXES = (".safetensors", ".sft")  # ComfyUI's checkpoint files (an SVD checkpoint is one of them)
# Official byte sizes (spec section 2.2); a different size is reported, not refused (tiny test models differ).
OFFICIAL_SIZES: dict[str, int] = {
    "unet": 6_303_636_358,
    "audio2token": 217_206_084,
    "audio2bucket": 87_050_998,
    "rife": 12_186_817,
    "yoloface": 84_574_759,
}


@dataclass(frozen=True)
class ModelPaths:
    """Explicit locations of every model file/folder; `root` is the folder searched (for messages), if any."""

    unet: Path
    audio2token: Path
    audio2bucket: Path
    svd: Path
    whisper: Path
    rife: Path | None = None
    yoloface: Path | None = None
    root: Path | None = field(default=None, compare=False)

    @classmethod
    def from_root(cls, root: Path | str, *, whisper: WhisperSearch | None = None) -> ModelPaths:
        """Paths in the official `checkpoints/` layout under `root` (optional files kept only when present).

        The UNet is `Sonic/unet.fp16.safetensors` when a conversion left one there, else `Sonic/unet.pth`.
        Whisper-tiny is where `whisper` found it (default: `find_whisper(root)`, i.e. beside the Sonic files or
        in the Hugging Face cache), else `<root>/whisper-tiny` (then reported missing).
        """
        base = Path(root).expanduser()
        rife = base / "RIFE" / "flownet.pkl"
        yolo = base / "yoloface_v5m.pt"
        search = whisper if whisper is not None else find_whisper(base)
        return cls(
            unet=preferred_unet_file(base / "Sonic"),
            audio2token=base / "Sonic" / "audio2token.pth",
            audio2bucket=base / "Sonic" / "audio2bucket.pth",
            svd=base / "stable-video-diffusion-img2vid-xt",
            whisper=search.folder if search.folder is not None else base / WHISPER_FOLDER,
            rife=rife if rife.is_file() else None,
            yoloface=yolo if yolo.is_file() else None,
            root=base,
        )

    @property
    def svd_is_single_file(self) -> bool:
        """`svd` names ComfyUI's single-file SVD checkpoint (models/checkpoints/svd_xt.safetensors) rather than
        the diffusers folder: VAE and CLIP vision come from it (models/svd_single_file.py)."""
        return is_single_file(self.svd)

    def searched(self, path: Path) -> Path:
        """The folder to name in messages: the root when known, else the file's own folder."""
        return self.root if self.root is not None else path.parent


def is_single_file(path: Path) -> bool:
    """A single-file checkpoint (what ComfyUI keeps in models/checkpoints) rather than a diffusers folder."""
    return path.suffix.lower() in SINGLE_FILE_SUFFIXES


def as_model_paths(source: Path | str | ModelPaths, whisper: WhisperSearch | None = None) -> ModelPaths:
    return source if isinstance(source, ModelPaths) else ModelPaths.from_root(source, whisper=whisper)


def preferred_unet_file(sonic: Path) -> Path:
    """The fp16 safetensors conversion when there is one (half the size, memory-mapped), else unet.pth.

    Only the final name counts: an interrupted conversion leaves at most a `.partial` file, which is ignored.
    """
    converted = sonic / UNET_FP16
    return converted if converted.is_file() else sonic / UNET_PTH


# --- where whisper-tiny can be --------------------------------------------------------------------------------
@dataclass(frozen=True)
class WhisperSearch:
    """Where whisper-tiny was found (None: nowhere), and every place looked, in order, for the error message."""

    folder: Path | None
    looked: tuple[str, ...]

    def hint(self) -> str:
        places = "; ".join(self.looked) if self.looked else "(no place given)"
        return (f"whisper-tiny was looked for in: {places}. Download it: {WHISPER_HF} (beside the Sonic files), "
                f"or `hf download {WHISPER_REPO}` (into the Hugging Face cache), or put the folder in "
                f"ComfyUI/models/audio_encoders/{WHISPER_FOLDER}")


def is_whisper_folder(folder: Path) -> bool:
    """A transformers whisper layout: both configs and one weights file (what from_pretrained needs)."""
    return (folder.is_dir() and all((folder / name).is_file() for name in WHISPER_CONFIGS)
            and any((folder / name).is_file() for name in WHISPER_WEIGHTS))


def _audio_encoder_candidates(folder: Path) -> list[Path]:
    """Sub-folders of an audio encoders folder named like whisper-tiny (`whisper-tiny` first, then e.g.
    `openai_whisper-tiny`). Single files are not read: see the loader's help page."""
    if not folder.is_dir():
        return []
    named = [c for c in folder.iterdir() if c.is_dir() and WHISPER_FOLDER in c.name.lower().replace("_", "-")]
    return sorted(named, key=lambda c: (c.name.lower() != WHISPER_FOLDER, c.name.lower()))


def _single_whisper_files(folder: Path) -> list[Path]:
    """Single-file whisper weights in an audio encoders folder: named in the error so the user knows why they
    were passed over (no published whisper-tiny single file exists, and the feature extractor needs its config)."""
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.iterdir()
                  if f.is_file() and WHISPER_FOLDER in f.name.lower().replace("_", "-"))


def _hf_cache_snapshot(cache: Path) -> Path | None:
    """The cached openai/whisper-tiny snapshot of the `main` ref, when its configs and weights are all cached."""
    from huggingface_hub import try_to_load_from_cache

    found: dict[str, Path] = {}
    for name in (*WHISPER_CONFIGS, *WHISPER_WEIGHTS):
        hit = try_to_load_from_cache(WHISPER_REPO, name, cache_dir=cache)
        if isinstance(hit, str):  # else None (not cached) or a "known not to exist" marker
            found[name] = Path(hit)
    if not all(name in found for name in WHISPER_CONFIGS) or not any(name in found for name in WHISPER_WEIGHTS):
        return None
    snapshot = found["config.json"].parent
    return snapshot if is_whisper_folder(snapshot) else None


def default_hf_cache() -> Path:
    """huggingface_hub's cache folder (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def find_whisper(root: Path | str | None, audio_encoder_dirs: Sequence[Path | str] = (),
                 hf_cache: Path | str | None = None) -> WhisperSearch:
    """Find whisper-tiny: `<root>/whisper-tiny`, then a whisper-tiny sub-folder of each audio encoders folder
    (ComfyUI's `models/audio_encoders`, passed in by the caller), then the Hugging Face cache (`hf_cache`, default
    huggingface_hub's own). The first complete one wins; `looked` names each place checked."""
    looked: list[str] = []
    places: list[tuple[Path, str]] = []
    if root is not None:
        places.append((Path(root).expanduser() / WHISPER_FOLDER, "beside the Sonic files"))
    for folder in (Path(d).expanduser() for d in audio_encoder_dirs):
        candidates = _audio_encoder_candidates(folder) or [folder / WHISPER_FOLDER]
        places += [(c, "audio encoders folder") for c in candidates]
    for folder, where in places:
        looked.append(f"{folder} ({where})")
        if is_whisper_folder(folder):
            return WhisperSearch(folder, tuple(looked))
    for folder in (Path(d).expanduser() for d in audio_encoder_dirs):
        looked += [f"{single} (a single file: not read, whisper-tiny needs its transformers folder)"
                   for single in _single_whisper_files(folder)]
    cache = Path(hf_cache).expanduser() if hf_cache is not None else default_hf_cache()
    looked.append(f"{cache / ('models--' + WHISPER_REPO.replace('/', '--'))} (Hugging Face cache)")
    snapshot = _hf_cache_snapshot(cache)
    if snapshot is not None:
        logger.info("whisper-tiny found in the Hugging Face cache: %s", snapshot)
    return WhisperSearch(snapshot, tuple(looked))


def download_hint(kind: str) -> str:
    """Where to get a missing file, by model kind."""
    if kind in ("svd", "vae", "image_encoder", "scheduler", "unet_config"):
        return SVD_HF
    if kind == "whisper":
        return WHISPER_HF
    if kind == "svd_checkpoint":
        return SVD_CHECKPOINT_HINT
    return SONIC_HF


@dataclass(frozen=True)
class FileStatus:
    name: str
    path: str | None
    required: bool
    exists: bool
    size_bytes: int
    expected_bytes: int | None
    status: str  # "ok" | "missing" | "empty" | "size_differs" | "not_configured"
    hint: str = ""


@dataclass(frozen=True)
class ModelFilesReport:
    root: str | None
    files: tuple[FileStatus, ...]

    @property
    def ok(self) -> bool:
        """True when every required file is present and non-empty (sizes may differ)."""
        return all(f.status in ("ok", "size_differs") for f in self.files if f.required)

    def missing(self) -> list[FileStatus]:
        return [f for f in self.files if f.required and f.status in ("missing", "empty")]


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _file_status(name: str, path: Path | None, required: bool, is_dir: bool = False, hint: str = "") -> FileStatus:
    hint = hint or download_hint(name)
    if path is None:
        return FileStatus(name, None, required, False, 0, None, "missing" if required else "not_configured", hint)
    exists = path.is_dir() if is_dir else path.is_file()
    size = (_dir_size(path) if is_dir else path.stat().st_size) if exists else 0
    # The official size is that of unet.pth; its fp16 conversion has no published size.
    expected = None if path.name == UNET_FP16 else OFFICIAL_SIZES.get(name)
    if not exists:
        status = "missing"
    elif size == 0:
        status = "empty"
    elif expected is not None and size != expected:
        status = "size_differs"
    else:
        status = "ok"
    return FileStatus(name, str(path), required, exists, size, expected, status, hint)


def _whisper_hint(paths: ModelPaths, whisper: WhisperSearch | None) -> str:
    """Every place whisper-tiny was looked for: the search given, else the default search of the root."""
    if whisper is None:
        whisper = find_whisper(paths.root) if paths.root is not None else WhisperSearch(None, (str(paths.whisper),))
    return whisper.hint()


def inspect_model_files(source: Path | str | ModelPaths, whisper: WhisperSearch | None = None) -> ModelFilesReport:
    """Presence and size of every model file, without loading anything (for the UI). `whisper` is the search
    that chose `paths.whisper` (its places are named when whisper-tiny is missing)."""
    paths = as_model_paths(source, whisper)
    root = paths.root
    whisper_ok = paths.whisper.is_dir()
    yolo = paths.yoloface if paths.yoloface is not None or root is None else root / "yoloface_v5m.pt"
    rife = paths.rife if paths.rife is not None or root is None else root / "RIFE" / "flownet.pkl"
    if paths.svd_is_single_file:  # the UNet and scheduler configs are then the built-in SVD-xt values
        svd_entries: tuple[FileStatus, ...] = (_file_status("svd_checkpoint", paths.svd, True),)
    else:
        svd_entries = (
            _file_status("unet_config", paths.svd / "unet" / "config.json", False),
            _file_status("vae", paths.svd / "vae", True, is_dir=True),
            _file_status("image_encoder", paths.svd / "image_encoder", True, is_dir=True),
            _file_status("scheduler", paths.svd / "scheduler", False, is_dir=True),
        )
    entries = (
        _file_status("unet", paths.unet, True),
        _file_status("audio2token", paths.audio2token, True),
        _file_status("audio2bucket", paths.audio2bucket, True),
        *svd_entries,
        _file_status("whisper", paths.whisper, True, is_dir=True,
                     hint="" if whisper_ok else _whisper_hint(paths, whisper)),
        _file_status("rife", rife, False),
        _file_status("yoloface", yolo, False),
    )
    return ModelFilesReport(root=None if root is None else str(root), files=entries)
