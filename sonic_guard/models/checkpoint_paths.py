"""Where Sonic's model files live (official layout or explicit paths), and a cheap presence/size report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SONIC_HF = "huggingface-cli download LeonJoe13/Sonic --local-dir <root>  (gives Sonic/, RIFE/, yoloface_v5m.pt)"
SVD_HF = ("huggingface-cli download stabilityai/stable-video-diffusion-img2vid-xt "
          "--local-dir <root>/stable-video-diffusion-img2vid-xt")
SVD_CHECKPOINT_HINT = ("put svd_xt.safetensors (the core SVD workflows' checkpoint) in ComfyUI/models/checkpoints, "
                       "or choose 'from the model folder' and download " + SVD_HF)
WHISPER_HF = "huggingface-cli download openai/whisper-tiny --local-dir <root>/whisper-tiny"

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
    def from_root(cls, root: Path | str) -> ModelPaths:
        """Paths in the official `checkpoints/` layout under `root` (optional files kept only when present)."""
        base = Path(root).expanduser()
        rife = base / "RIFE" / "flownet.pkl"
        yolo = base / "yoloface_v5m.pt"
        return cls(
            unet=base / "Sonic" / "unet.pth",
            audio2token=base / "Sonic" / "audio2token.pth",
            audio2bucket=base / "Sonic" / "audio2bucket.pth",
            svd=base / "stable-video-diffusion-img2vid-xt",
            whisper=base / "whisper-tiny",
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


def as_model_paths(source: Path | str | ModelPaths) -> ModelPaths:
    return source if isinstance(source, ModelPaths) else ModelPaths.from_root(source)


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


def _file_status(name: str, path: Path | None, required: bool, is_dir: bool = False) -> FileStatus:
    hint = download_hint(name)
    if path is None:
        return FileStatus(name, None, required, False, 0, None, "missing" if required else "not_configured", hint)
    exists = path.is_dir() if is_dir else path.is_file()
    size = (_dir_size(path) if is_dir else path.stat().st_size) if exists else 0
    expected = OFFICIAL_SIZES.get(name)
    if not exists:
        status = "missing"
    elif size == 0:
        status = "empty"
    elif expected is not None and size != expected:
        status = "size_differs"
    else:
        status = "ok"
    return FileStatus(name, str(path), required, exists, size, expected, status, hint)


def inspect_model_files(source: Path | str | ModelPaths) -> ModelFilesReport:
    """Presence and size of every model file, without loading anything (for the UI)."""
    paths = as_model_paths(source)
    root = paths.root
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
        _file_status("whisper", paths.whisper, True, is_dir=True),
        _file_status("rife", rife, False),
        _file_status("yoloface", yolo, False),
    )
    return ModelFilesReport(root=None if root is None else str(root), files=entries)
