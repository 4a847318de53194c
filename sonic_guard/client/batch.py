"""Batch jobs: (image, audio) pairs from a CSV or a folder, their fingerprints, and the resume state file."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import WorkflowError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".m4a", ".ogg", ".opus", ".aac")
STATE_FILE_NAME = "sonic_batch_state.jsonl"


@dataclass(frozen=True)
class BatchJob:
    name: str
    image: Path
    audio: Path


def safe_name(text: str) -> str:
    """A job name usable as a folder name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "job"


def jobs_from_csv(path: Path) -> list[BatchJob]:
    """Rows `image,audio[,name]` (header required); relative paths are relative to the CSV's folder."""
    path = Path(path)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    jobs: list[BatchJob] = []
    for number, row in enumerate(rows, start=2):
        image, audio = (row.get("image") or "").strip(), (row.get("audio") or "").strip()
        if not image or not audio:
            raise WorkflowError(problem=f"{path} line {number} has no image or no audio",
                                expected="a header `image,audio[,name]` and both columns filled on every row",
                                fix="fill in the row or remove it")
        name = (row.get("name") or "").strip() or Path(image).stem
        jobs.append(BatchJob(safe_name(name), path.parent / image, path.parent / audio))
    return _checked(jobs, str(path))


def jobs_from_folder(folder: Path) -> list[BatchJob]:
    """Pairs matched by file stem (face.png + face.wav); unmatched files are logged and skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WorkflowError(problem=f"{folder} is not a folder", expected="a folder of face.png + face.wav pairs",
                            fix="check the --batch-dir path")
    images: dict[str, Path] = {}
    audios: dict[str, Path] = {}
    for item in sorted(folder.iterdir()):
        suffix = item.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            images.setdefault(item.stem, item)
        elif suffix in AUDIO_SUFFIXES:
            audios.setdefault(item.stem, item)
    for stem in sorted(set(images) ^ set(audios)):
        logger.warning("Skipped %s in %s: no %s with the same name", stem, folder,
                       "audio" if stem in images else "image")
    jobs = [BatchJob(safe_name(stem), images[stem], audios[stem]) for stem in sorted(set(images) & set(audios))]
    return _checked(jobs, str(folder))


def _checked(jobs: list[BatchJob], source: str) -> list[BatchJob]:
    if not jobs:
        raise WorkflowError(problem=f"{source} lists no (image, audio) pair", expected="at least one pair",
                            fix="add pairs (same file stem in a folder, or rows in the CSV)")
    seen: set[str] = set()
    for job in jobs:
        if job.name in seen:
            raise WorkflowError(problem=f"Two jobs in {source} are named {job.name!r}",
                                expected="unique names (they name the output folders)",
                                fix="add a distinct `name` column to the CSV")
        seen.add(job.name)
        for path in (job.image, job.audio):
            if not path.is_file():
                raise WorkflowError(problem=f"Job {job.name}: {path} does not exist",
                                    expected="existing image and audio files", fix="fix the path")
    return jobs


def fingerprint(job: BatchJob, workflow: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """Hash of the input files' bytes, the workflow and the overrides: a change to any of them reruns the job."""
    digest = hashlib.sha256()
    for path in (job.image, job.audio):
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(json.dumps({"workflow": workflow, "settings": settings}, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


class BatchState:
    """The JSON-lines state file in the output folder: one line per attempt; the last line of a job counts."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()  # parallel jobs append to the same file
        if self.path.exists():
            for number, line in enumerate(self.path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    # A line cut short by a crash: the job it described simply runs again.
                    logger.warning("Ignored line %d of %s (not JSON)", number, self.path)
                    continue
                if isinstance(record, dict) and "name" in record:
                    self.records[record["name"]] = record

    def is_done(self, job: BatchJob, job_fingerprint: str) -> bool:
        """Finished before with the same fingerprint, and its output files are still there."""
        record = self.records.get(job.name)
        if not record or record.get("status") != "done" or record.get("fingerprint") != job_fingerprint:
            return False
        return all((self.path.parent / output).exists() for output in record.get("outputs", []))

    def record(self, job: BatchJob, job_fingerprint: str, status: str, **fields: Any) -> dict[str, Any]:
        entry = {"name": job.name, "fingerprint": job_fingerprint, "status": status,
                 "image": str(job.image), "audio": str(job.audio),
                 "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **fields}
        line = json.dumps(entry, default=str) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as handle:
                handle.write(line)
            self.records[job.name] = entry
        return entry

    def relative(self, paths: Iterable[Path]) -> list[str]:
        return [Path(p).resolve().relative_to(self.path.parent.resolve()).as_posix() for p in paths]
