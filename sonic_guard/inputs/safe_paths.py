"""Confine user-given file names to one folder (ComfyUI's input folder)."""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path

from ..errors import BadInputError, UnsafePathError

logger = logging.getLogger(__name__)

_SUGGESTIONS = 5
# Listing a huge folder to suggest names must stay cheap.
_MAX_NAMES_SCANNED = 5000


def resolve_user_path(name: str, root: Path) -> Path:
    """The real path of `name` inside `root`; refuses escapes (.., absolute, symlinks) and missing files."""
    if not isinstance(name, str) or not name.strip():
        raise BadInputError(
            problem="No file name was given",
            expected="the name of a file in the input folder",
            fix="choose or upload a file",
        )
    if "\x00" in name:
        raise UnsafePathError(
            problem="The file name contains a NUL character",
            expected="a plain file name",
            fix="choose the file again from the list",
        )
    try:
        real_root = Path(root).resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise BadInputError(
            problem=f"The input folder {root} does not exist",
            expected="an existing folder",
            fix="check the ComfyUI installation (the input folder is created at start-up)",
        ) from exc
    candidate = Path(name) if os.path.isabs(name) else real_root / name
    try:
        real = candidate.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # symlink loops, names too long for the file system
        raise _missing(name, real_root, f"it cannot be resolved ({exc.__class__.__name__})") from exc
    if not real.is_relative_to(real_root) or real == real_root:
        logger.warning("Refused a path outside the input folder: %r", name)
        raise UnsafePathError(
            problem=f"The path {name!r} points outside the input folder",
            expected=f"a file inside {real_root}",
            fix="choose a file from the input folder, or upload it there first",
        )
    try:
        is_file = real.is_file()
        exists = real.exists()
    except OSError as exc:
        raise _missing(name, real_root, f"it cannot be read ({exc.__class__.__name__})") from exc
    if not is_file:
        raise _missing(name, real_root, "it is a folder" if exists else "no such file")
    return real


def _missing(name: str, root: Path, why: str) -> BadInputError:
    similar = _similar_names(name, root)
    hint = f" Similar files: {', '.join(similar)}." if similar else ""
    return BadInputError(
        problem=f"The file {name!r} was not found in {root} ({why}).{hint}",
        expected="the name of an existing file in the input folder",
        fix="pick the file from the list, or upload it to the input folder",
    )


def _similar_names(name: str, root: Path) -> list[str]:
    """A few names inside root that look like `name` (same sub-folder when it exists)."""
    relative = Path(name)
    folder = root / relative.parent if not relative.is_absolute() else root
    try:
        folder = folder.resolve()
        if not folder.is_relative_to(root) or not folder.is_dir():
            folder = root
        names = []
        with os.scandir(folder) as entries:
            for index, entry in enumerate(entries):
                if index >= _MAX_NAMES_SCANNED:
                    break
                if entry.is_file():
                    names.append(entry.name)
    except OSError:
        return []
    return difflib.get_close_matches(relative.name, names, n=_SUGGESTIONS, cutoff=0.5)
