"""Fetch the files a Sonic model folder lacks from the Hugging Face Hub, into the official layout.

`python -m sonic_guard.models.download --dest <folder> [--what sonic,whisper,svd,yolo]` on the command line; the
editor's "Download missing models" action runs the same `download` through `DownloadJobs`.

How it behaves:
- The hub's own metadata decides: one repo listing (`model_info`, with sizes) plans the files and the free disk
  space is checked against their sizes BEFORE any byte is fetched; each file's HEAD (`X-Linked-Size`/`ETag`) is
  checked again before, and the file's length after, its download.
- Resumable: bytes go to `<dest>/.sonic_download/<file>.<etag>.incomplete` and a rerun continues that file with a
  Range request (huggingface_hub's `http_get`, which also resumes by itself when a connection drops mid-file).
  huggingface_hub 1.x/2.x deletes its own `.incomplete` file when a download fails, so the partial file is kept
  here instead. A file enters the layout only whole, by an atomic rename: the layout never holds a partial file.
- `HF_ENDPOINT` and `HF_HUB_OFFLINE` are read when called (not when huggingface_hub was imported).
- TorchScript (`yoloface_v5m.pt`) is fetched only when asked for by name ("yolo"); nothing here loads any file.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import shutil
import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from ..errors import SonicGuardError

logger = logging.getLogger(__name__)

PUBLIC_ENDPOINT = "https://huggingface.co"
PARTIAL_FOLDER = ".sonic_download"  # partial files, kept for a resume; removed when everything is in place
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Part:
    """One selectable piece of the model folder: files of one hub repo, placed under `subfolder` of the folder.

    Each entry of `files` lists repo paths in order of preference; the first one the repo has is fetched."""

    key: str
    repo_id: str
    subfolder: str
    files: tuple[tuple[str, ...], ...]
    what: str


PARTS: dict[str, Part] = {
    part.key: part
    for part in (
        Part("sonic", "LeonJoe13/Sonic", "", (
            ("Sonic/unet.pth",), ("Sonic/audio2token.pth",), ("Sonic/audio2bucket.pth",), ("RIFE/flownet.pkl",),
        ), "the Sonic UNet, audio adapters and RIFE"),
        Part("whisper", "openai/whisper-tiny", "whisper-tiny", (
            ("config.json",), ("preprocessor_config.json",), ("model.safetensors", "pytorch_model.bin"),
        ), "the whisper-tiny audio encoder"),
        # The full-precision weights when the repo has them (what diffusers loads when both exist), else fp16.
        Part("svd", "stabilityai/stable-video-diffusion-img2vid-xt", "stable-video-diffusion-img2vid-xt", (
            ("unet/config.json",),
            ("vae/config.json",),
            ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"),
            ("image_encoder/config.json",),
            ("image_encoder/model.safetensors", "image_encoder/model.fp16.safetensors"),
            ("scheduler/scheduler_config.json",),
            ("feature_extractor/preprocessor_config.json",),
        ), "the SVD-xt VAE, image encoder, scheduler and UNet config (no UNet weights)"),
        # TorchScript is code: fetched only when the user names it.
        Part("yolo", "LeonJoe13/Sonic", "", (("yoloface_v5m.pt",),), "the YOLO face detector (TorchScript)"),
    )
}
DEFAULT_PARTS = ("sonic", "whisper", "svd")


class DownloadError(SonicGuardError):
    """A model download that could not start or finish (offline, unreachable hub, disk space, size mismatch)."""

    reason = "download"


class DownloadBusyError(DownloadError):
    """A download is already running (one at a time)."""

    reason = "download_busy"


@dataclass(frozen=True)
class PlannedFile:
    part: str
    repo_id: str
    revision: str  # the commit the listing named: every file of one repo comes from the same commit
    repo_path: str
    target: str  # relative to the model folder
    size: int


@dataclass(frozen=True)
class DownloadPlan:
    dest: Path
    endpoint: str
    files: tuple[PlannedFile, ...]
    present: tuple[str, ...]  # targets already in place with the hub's size

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class DownloadProgress:
    state: str  # "planning" | "downloading" | "done" | "failed"
    file: str = ""
    file_bytes: int = 0
    file_total: int = 0
    done_bytes: int = 0
    total_bytes: int = 0
    files_done: int = 0
    files_total: int = 0

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else (1.0 if self.state == "done" else 0.0)


ProgressCallback = Callable[[DownloadProgress], None]


def hub_endpoint() -> str:
    """HF_ENDPOINT as set now (huggingface_hub reads it once, at import)."""
    return (os.environ.get("HF_ENDPOINT") or PUBLIC_ENDPOINT).rstrip("/")


def offline_requested() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, with huggingface_hub's notion of true."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def parse_parts(what: str | Iterable[str] | None) -> tuple[str, ...]:
    """`"sonic,whisper"` or a list of names, validated; None means the default parts (never yolo)."""
    if what is None:
        return DEFAULT_PARTS
    names = [n.strip().lower() for n in (what.split(",") if isinstance(what, str) else what) if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        raise DownloadError(f"unknown model part(s) {unknown or names!r}", f"a comma-separated subset of {list(PARTS)}",
                            "e.g. --what sonic,whisper,svd (add yolo only if you want the TorchScript face detector)")
    return tuple(dict.fromkeys(names))


def model_folder_name(name: object) -> str:
    """A plain folder name for models/sonic/<name> (no path separators, no '..')."""
    if not isinstance(name, str) or not FOLDER_NAME.fullmatch(name) or ".." in name:
        raise DownloadError(f"model folder name {name!r} is not a plain folder name",
                            "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
                            "pick a name such as 'sonic'; the files go to ComfyUI/models/sonic/<name>")
    return name


def _target(part: Part, repo_path: str) -> str:
    return f"{part.subfolder}/{repo_path}" if part.subfolder else repo_path


def missing_parts(dest: Path, parts: Iterable[str] = DEFAULT_PARTS) -> list[str]:
    """The parts with at least one file absent from `dest` (a local look, no network)."""
    return [key for key in parts
            if any(not any((dest / _target(PARTS[key], c)).is_file() for c in choices)
                   for choices in PARTS[key].files)]


def manual_command(part: Part, dest: Path) -> str:
    """The command that fetches `part` by hand (for error messages)."""
    files = " ".join(choices[0] for choices in part.files)
    return f"hf download {part.repo_id} {files} --local-dir {dest / part.subfolder if part.subfolder else dest}"


def _hub_error(error: BaseException, what: str, url: str, parts: Iterable[str], dest: Path) -> DownloadError:
    by_hand = "; ".join(manual_command(PARTS[key], dest) for key in parts)
    return DownloadError(
        f"could not {what} from {url} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})",
        "the Hugging Face Hub (or the mirror in HF_ENDPOINT) reachable from this machine",
        f"check the network or proxy, or set HF_ENDPOINT to a reachable mirror and retry, or download by hand: "
        f"{by_hand}")


def _network_errors() -> tuple[type[BaseException], ...]:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    return (httpx2.HTTPError, HfHubHTTPError, OfflineModeIsEnabled, OSError)


def _refuse_offline(parts: Iterable[str], dest: Path) -> None:
    if offline_requested():
        by_hand = "; ".join(manual_command(PARTS[key], dest) for key in parts)
        raise DownloadError("HF_HUB_OFFLINE is set, so no model file can be fetched",
                            "HF_HUB_OFFLINE unset (or 0) for a download",
                            f"unset HF_HUB_OFFLINE and retry, or copy the files in by hand on a machine that is "
                            f"online: {by_hand}")


def plan_download(dest: Path | str, parts: Iterable[str] = DEFAULT_PARTS, *, endpoint: str | None = None,
                  ) -> DownloadPlan:
    """List what each part's repo has (one listing per repo, with sizes) and keep the files `dest` lacks."""
    from huggingface_hub import HfApi

    dest, keys, endpoint = Path(dest), parse_parts(list(parts)), (endpoint or hub_endpoint()).rstrip("/")
    _refuse_offline(keys, dest)
    api, listings, planned, present = HfApi(endpoint=endpoint), {}, [], []
    for key in keys:
        part = PARTS[key]
        if part.repo_id not in listings:
            try:
                listings[part.repo_id] = api.model_info(part.repo_id, files_metadata=True)
            except _network_errors() as error:
                raise _hub_error(error, f"list {part.repo_id}", f"{endpoint}/api/models/{part.repo_id}", keys,
                                 dest) from error
        info = listings[part.repo_id]
        sizes = {s.rfilename: s.size for s in info.siblings or ()}
        for choices in part.files:
            repo_path = next((c for c in choices if c in sizes), None)
            if repo_path is None or sizes[repo_path] is None:
                raise DownloadError(f"{part.repo_id} at {endpoint} lists none of {list(choices)} (or no size)",
                                    f"the files of the official {part.repo_id} repository",
                                    "check that HF_ENDPOINT points at a full mirror of the Hugging Face Hub")
            target, size = _target(part, repo_path), int(sizes[repo_path])
            existing = dest / target
            if existing.is_file() and existing.stat().st_size == size:
                present.append(target)
            else:
                planned.append(PlannedFile(key, part.repo_id, info.sha, repo_path, target, size))
    return DownloadPlan(dest, endpoint, tuple(planned), tuple(present))


def _partial_path(dest: Path, target: str, etag: str) -> Path:
    return dest / PARTIAL_FOLDER / f"{target}.{re.sub(r'[^A-Za-z0-9]', '', etag)[:40]}.incomplete"


def partial_bytes(plan: DownloadPlan) -> int:
    """Bytes already on disk in partial files of this plan (any etag): not needed again."""
    total = 0
    for f in plan.files:
        folder = (plan.dest / PARTIAL_FOLDER / f.target).parent
        if folder.is_dir():
            total += sum(p.stat().st_size for p in folder.glob(f"{Path(f.target).name}.*.incomplete"))
    return total


def free_disk_bytes(dest: Path) -> int:
    """Free bytes on the file system that will hold `dest` (its nearest existing ancestor)."""
    probe = dest.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_free_space(plan: DownloadPlan, free_bytes: int) -> None:
    """Refuse before any byte is fetched when the files cannot fit (partial files already count as fetched)."""
    needed = plan.total_bytes - partial_bytes(plan)
    if needed > free_bytes:
        raise DownloadError(
            f"not enough free disk space for the model download into {plan.dest}: {needed / 1e9:.2f} GB needed "
            f"({len(plan.files)} files, sizes from the hub), {free_bytes / 1e9:.2f} GB free",
            f"at least {needed / 1e9:.2f} GB free on the disk that holds {plan.dest}",
            "free some space or choose a model folder on a larger disk, then retry; nothing was downloaded")


class _CountingFile:
    """The partial file as http_get sees it: every write reports the file's new length."""

    def __init__(self, raw: BinaryIO, on_write: Callable[[int], None]) -> None:
        self._raw, self._on_write = raw, on_write

    def write(self, chunk: bytes) -> int:
        written = self._raw.write(chunk)
        self._on_write(self._raw.tell())
        return written

    def __getattr__(self, name: str) -> Any:  # seek, tell, truncate: the rewind when a server ignores Range
        return getattr(self._raw, name)


def _fetch(plan: DownloadPlan, f: PlannedFile, report: Callable[[int], None]) -> None:
    """One file: HEAD for its etag/size/location, resume or start its partial file, check, rename into place."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers, silent_tqdm

    url = hf_hub_url(f.repo_id, f.repo_path, revision=f.revision, endpoint=plan.endpoint)
    keys = (f.part,)
    try:
        meta = get_hf_file_metadata(url, endpoint=plan.endpoint, retry_on_errors=True)
    except _network_errors() as error:
        raise _hub_error(error, f"read the metadata of {f.repo_path}", url, keys, plan.dest) from error
    if meta.size is not None and meta.size != f.size or not meta.etag:
        raise DownloadError(f"{url} reports size {meta.size} and etag {meta.etag!r}, the listing said {f.size}",
                            "one consistent file on the hub", "retry later (the repo may be changing) or set "
                            "HF_ENDPOINT to a consistent mirror")
    partial = _partial_path(plan.dest, f.target, meta.etag)
    partial.parent.mkdir(parents=True, exist_ok=True)
    for stale in partial.parent.glob(f"{Path(f.target).name}.*.incomplete"):  # an older version of the file
        if stale != partial:
            stale.unlink()
    resume = partial.stat().st_size if partial.exists() else 0
    if resume > f.size:  # not a prefix of this file: start over
        partial.unlink()
        resume = 0
    if resume:
        logger.info("resuming %s at byte %d of %d", f.target, resume, f.size)
    report(resume)
    headers = build_hf_headers()
    if urlsplit(meta.location).netloc != urlsplit(url).netloc:  # a CDN's signed URL: the token stays on the hub
        headers.pop("authorization", None)
    with partial.open("ab") as raw:
        try:
            http_get(meta.location, _CountingFile(raw, report), resume_size=resume, headers=headers,
                     expected_size=f.size, displayed_filename=f.target, tqdm_class=silent_tqdm)
        except _network_errors() as error:
            raw.flush()
            got = raw.tell()
            if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DownloadError(f"the disk under {plan.dest} filled up while fetching {f.target} (byte {got} of "
                                    f"{f.size})", "room for the files the plan measured",
                                    "free some space and run the download again: it continues from that byte"
                                    ) from error
            raise _hub_error(error, f"fetch {f.repo_path} (stopped at byte {got} of {f.size}; a rerun continues "
                             f"from there)", meta.location, keys, plan.dest) from error
    if partial.stat().st_size != f.size:
        got = partial.stat().st_size
        partial.unlink()
        raise DownloadError(f"{f.target} arrived with {got} bytes, the hub says {f.size}", "the hub's size",
                            "retry: the partial file was deleted so the next attempt starts clean")
    final = plan.dest / f.target
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, final)


def _remove_partial_folder(dest: Path) -> None:
    folder = dest / PARTIAL_FOLDER
    if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
        shutil.rmtree(folder)


def download(dest: Path | str, parts: Iterable[str] | None = None, *, progress: ProgressCallback | None = None,
             free_bytes: int | None = None, endpoint: str | None = None) -> DownloadPlan:
    """Fetch the files of `parts` (default: the parts `dest` lacks, never yolo unless named) into `dest`.

    `free_bytes` overrides the measured free space (tests). Returns the plan that was carried out."""
    dest = Path(dest)
    keys = parse_parts(parts) if parts is not None else tuple(missing_parts(dest))
    emit = progress or (lambda _p: None)
    emit(DownloadProgress("planning"))
    plan = plan_download(dest, keys, endpoint=endpoint) if keys else DownloadPlan(
        dest, (endpoint or hub_endpoint()), (), ())
    check_free_space(plan, free_disk_bytes(dest) if free_bytes is None else free_bytes)
    total, done = plan.total_bytes, 0
    state = DownloadProgress("downloading", total_bytes=total, files_total=len(plan.files))
    for index, f in enumerate(plan.files):
        def report(file_bytes: int, f: PlannedFile = f, index: int = index, before: int = done) -> None:
            emit(replace(state, file=f.target, file_bytes=file_bytes, file_total=f.size,
                         done_bytes=before + file_bytes, files_done=index))

        _fetch(plan, f, report)
        done += f.size
    _remove_partial_folder(dest)
    emit(replace(state, state="done", done_bytes=total, files_done=len(plan.files)))
    logger.info("model download into %s: %d files, %d bytes (%d already present)", dest, len(plan.files), total,
                len(plan.present))
    return plan


class DownloadJobs:
    """Background downloads for the editor: one at a time, progress readable by job id while the server runs."""

    def __init__(self, run: Callable[..., DownloadPlan] = download) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._active: str | None = None

    def start(self, dest: Path, parts: Iterable[str] | None) -> str:
        keys = parse_parts(parts) if parts is not None else tuple(missing_parts(dest))
        with self._lock:
            if self._active is not None:
                raise DownloadBusyError(f"model download {self._active} is still running", "one download at a time",
                                        f"wait for it (GET /sonic/models/download/{self._active}) and retry")
            job_id = uuid.uuid4().hex
            self._jobs[job_id] = {"job_id": job_id, "dest": str(dest), "what": list(keys),
                                  **asdict(DownloadProgress("planning")), "fraction": 0.0, "error": None}
            self._active = job_id
        threading.Thread(target=self._work, args=(job_id, dest, keys), name=f"sonic-download-{job_id[:8]}",
                         daemon=True).start()
        return job_id

    def _update(self, job_id: str, progress: DownloadProgress) -> None:
        with self._lock:
            self._jobs[job_id].update(asdict(progress), fraction=round(progress.fraction, 4))

    def _work(self, job_id: str, dest: Path, keys: tuple[str, ...]) -> None:
        try:
            self._run(dest, keys, progress=lambda p: self._update(job_id, p))
        except Exception as error:  # reported to the editor through the job's state, and logged with its traceback
            logger.exception("model download %s into %s failed", job_id, dest)
            with self._lock:
                self._jobs[job_id].update(state="failed", error=str(error))
        finally:
            with self._lock:
                self._active = None

    def status(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return dict(job) if job is not None else None


def _log_progress(progress: DownloadProgress, last: list[str]) -> None:
    key = f"{int(progress.fraction * 100)}% {progress.file}"  # one line per whole percent, and per file
    if progress.state == "downloading" and key != last[0]:
        last[0] = key
        logger.info("[%6.1f%%] %d/%d files  %s %.1f/%.1f MB", progress.fraction * 100, progress.files_done,
                    progress.files_total, progress.file, progress.file_bytes / 1e6, progress.file_total / 1e6)


def _cli_logging() -> None:
    """The command line's output: progress and the result on stdout, errors on stderr, bare messages."""
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[out, err])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sonic_guard.models.download", description=__doc__.splitlines()[0])
    parser.add_argument("--dest", required=True, type=Path, help="the model folder, e.g. ComfyUI/models/sonic/sonic")
    parser.add_argument("--what", default=None, help=f"comma-separated subset of {','.join(PARTS)} (default: the "
                        f"parts of {','.join(DEFAULT_PARTS)} the folder lacks; yolo only when named)")
    args = parser.parse_args(argv)
    _cli_logging()
    last = [""]
    try:
        plan = download(args.dest, args.what and parse_parts(args.what), progress=lambda p: _log_progress(p, last))
    except DownloadError as error:
        logger.error("error: %s", error)
        return 1
    logger.info("done: %d files (%.1f MB) fetched, %d already present, in %s", len(plan.files),
                plan.total_bytes / 1e6, len(plan.present), args.dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
