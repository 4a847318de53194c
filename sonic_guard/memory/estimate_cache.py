"""The estimator's simulated figures kept across server restarts: one small JSON file beside the run history.

A cold pre-flight simulates the engine's modules on the meta device (seconds); after a restart the same figures
are read back (milliseconds). Entries live in a *scope*: everything that can change a simulated byte count
besides the plan's own shapes and levers — the model configuration's hash, the torch/diffusers/transformers
versions, the allocator settings (`PYTORCH_CUDA_ALLOC_CONF`), the device type and block rounding, and a hash of
the simulated source code (so an edit to a module or to the simulation never reads stale figures). Inside a
scope an entry is keyed by the stage's shapes and levers (see `MemoryEstimator`).

The file is replaced atomically (temporary file + `os.replace`), so concurrent writers never leave a torn file;
the last writer wins and an entry it did not know is simply simulated again later. A corrupt, truncated or
foreign-format file is ignored with a log line and rebuilt on the next write. Size is bounded: the scopes used
longest ago are dropped first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
FILE_NAME = "estimate_cache.json"
DEFAULT_MAX_ENTRIES = 4096  # ~100 B each: the file stays well under 1 MB
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# Sources whose edits can change a simulated figure: the simulation itself and every module it builds.
_SIMULATED_SOURCES = ("memory/*.py", "models/*.py")


def package_version(name: str) -> str:
    """An installed distribution's version without importing it ("absent" if it is not installed)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def simulation_code_hash(root: Path = _PACKAGE_ROOT) -> str:
    """Hash of the sources that decide simulated bytes (a new release or a local edit starts a new scope)."""
    digest = hashlib.sha256()
    for pattern in _SIMULATED_SOURCES:
        for path in sorted(root.glob(pattern)):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


SIMULATED_PACKAGES = ("torch", "diffusers", "transformers")  # their kernels and modules make the figures


def estimate_scope(config_fingerprint: str, *, device_type: str, block: int, alloc_conf: str | None = None,
                   versions: Mapping[str, str] | None = None) -> dict[str, str]:
    """Everything besides shapes and levers that a cached figure depends on. None: `alloc_conf` from the
    environment (as torch reads it), `versions` of `SIMULATED_PACKAGES` from the installed distributions."""
    if alloc_conf is None:
        alloc_conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    if versions is None:
        versions = {name: package_version(name) for name in SIMULATED_PACKAGES}
    return {
        "config": config_fingerprint, **versions, "alloc_conf": alloc_conf, "device_type": device_type,
        "block": str(block), "code": simulation_code_hash(),
    }


def scope_id(scope: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(scope), sort_keys=True).encode()).hexdigest()[:24]


class EstimateCache:
    """Figures (name -> bytes) per scope in one JSON file at `path`; keeps at most `max_entries` in all."""

    def __init__(self, path: str | Path, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.path = Path(path)
        self.max_entries = max_entries

    @classmethod
    def beside(cls, history_path: str | Path, max_entries: int = DEFAULT_MAX_ENTRIES) -> EstimateCache:
        """The cache in the run history's folder (`RunHistory.path`), where the pack keeps what it learns."""
        return cls(Path(history_path).parent / FILE_NAME, max_entries)

    def load(self, scope: Mapping[str, str]) -> dict[str, int]:
        """The figures stored for `scope`; empty when there are none or the file cannot be used."""
        entry = self._read().get(scope_id(scope))
        return dict(entry["entries"]) if entry else {}

    def store(self, scope: Mapping[str, str], entries: Mapping[str, int]) -> None:
        """Merge `entries` into `scope` and replace the file atomically (the oldest scopes go past the bound)."""
        if not entries:
            return
        scopes = self._read()
        sid = scope_id(scope)
        merged = dict(scopes.pop(sid, {}).get("entries", {}))
        merged.update({str(k): int(v) for k, v in entries.items()})
        # A scope larger than the bound keeps its newest figures (dicts keep insertion order).
        merged = dict(list(merged.items())[-self.max_entries:])
        kept = {sid: {"scope": dict(scope), "used": time.time(), "entries": merged}}
        room = self.max_entries - len(merged)
        for other_id, other in sorted(scopes.items(), key=lambda item: item[1]["used"], reverse=True):
            if len(other["entries"]) > room:
                continue
            kept[other_id] = other
            room -= len(other["entries"])
        self._write({"format": CACHE_FORMAT, "scopes": kept})

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as error:
            logger.warning("estimate cache %s unreadable (%s); simulating afresh", self.path, error)
            return {}
        try:
            return _valid_scopes(json.loads(data))  # bad UTF-8 is a ValueError too
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            logger.warning("estimate cache %s ignored and rebuilt on the next write: %s", self.path, error)
            return {}

    def _write(self, document: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{FILE_NAME}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, separators=(",", ":"))
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the history beside it is not
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _valid_scopes(document: Any) -> dict[str, dict[str, Any]]:
    """The document's scopes, or ValueError/TypeError/KeyError naming what is wrong with it."""
    if not isinstance(document, dict):
        raise TypeError(f"expected a JSON object, found {type(document).__name__}")
    if document.get("format") != CACHE_FORMAT:
        raise ValueError(f"format {document.get('format')!r}, this version reads {CACHE_FORMAT}")
    scopes = document["scopes"]
    if not isinstance(scopes, dict):
        raise TypeError("'scopes' is not an object")
    for sid, entry in scopes.items():
        entries = entry["entries"]
        float(entry["used"])
        if not isinstance(entries, dict) or not all(type(v) is int for v in entries.values()):
            raise TypeError(f"scope {sid}: entries must map names to integers")
    return scopes
