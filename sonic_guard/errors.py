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
