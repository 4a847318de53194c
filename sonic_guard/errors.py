"""The pack's exception hierarchy.

Every error a user can cause says three things: what was wrong, what was expected, and how to fix it.
`reason` is a short, low-cardinality label used by the metrics (failures by reason).
"""

from __future__ import annotations


class SonicGuardError(Exception):
    """Base class: an error the user can act on."""

    reason = "error"

    def __init__(self, problem: str, expected: str = "", fix: str = "") -> None:
        self.problem = problem
        self.expected = expected
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        parts = [self.problem.rstrip(".") + "."]
        if self.expected:
            parts.append(f"Expected: {self.expected.rstrip('.')}.")
        if self.fix:
            parts.append(f"Fix: {self.fix.rstrip('.')}.")
        return " ".join(parts)


class BadInputError(SonicGuardError):
    """An image, audio file or parameter that cannot be used as given."""

    reason = "bad_input"


class BadAudioError(BadInputError):
    reason = "bad_audio"


class BadImageError(BadInputError):
    reason = "bad_image"


class NoFaceError(BadImageError):
    reason = "no_face"


class UnsafePathError(BadInputError):
    """A file path that points outside the folders the pack may read."""

    reason = "unsafe_path"


class CheckpointError(SonicGuardError):
    """A model file that is missing, truncated, or not the file the pack expects."""

    reason = "checkpoint"


class MemoryPlanError(SonicGuardError):
    """No plan fits the memory that is free (policy strict, or the ladder ran out)."""

    reason = "will_not_fit"


class OutOfMemoryAfterRetriesError(SonicGuardError):
    reason = "oom"


class TagError(BadInputError):
    """A profiling tag that would leak paths or free text, or break the backend's label rules."""

    reason = "bad_tag"


class DiskFullError(SonicGuardError):
    """The disk under the output or job folder ran out of space (ENOSPC) or quota (EDQUOT) while writing."""

    reason = "disk_full"

    def __init__(self, folder: str, free_bytes: int | None = None, needed_bytes: int | None = None,
                 written_bytes: int | None = None) -> None:
        self.folder = folder
        self.free_bytes = free_bytes
        self.needed_bytes = needed_bytes
        figures = [f"{free_bytes / 2**20:.1f} MiB free" if free_bytes is not None else "free space unknown"]
        if needed_bytes is not None:
            figures.append(f"{needed_bytes / 2**20:.2f} MiB more needed")
        if written_bytes is not None:
            figures.append(f"{written_bytes / 2**20:.2f} MiB written before it filled")
        super().__init__(
            problem=f"the disk holding {folder} is full ({', '.join(figures)}); the half-written file was removed",
            expected="room on that disk for the whole video and its temporary files (a long job keeps its "
                     "segment files there too until it is stitched)",
            fix="free space on that disk, or start ComfyUI with --output-directory on a disk with room, then "
                "queue the prompt again (finished segments of a long job are reused)",
        )
