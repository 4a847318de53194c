"""Profiling tags: validation and the per-run tag set.

Tags end up as labels on a shared profiling backend, so they carry no file paths and no free text: keys and
values are short, from a fixed charset, and checked here before anything is sent. Grafana Pyroscope turns
sample labels into series, so values are also kept low-cardinality (duration is bucketed, not exact).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from ..errors import TagError

KEY_PATTERN = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,63}")
VALUE_PATTERN = re.compile(r"[a-zA-Z0-9_.:\-]{1,64}")
MAX_USER_TAGS = 16

# Keys the pack sets itself or the backend reserves; a user tag may not shadow them.
RESERVED_KEYS = frozenset(
    {
        "stage",
        "duration",
        "resolution",
        "inference_steps",
        "service_name",
        "pyroscope_spy",
        "span_id",
        "span_name",
        "profile_id",
        "pack",
        "job",
        "instance",
    }
)

PACK_RUN_KEYS = ("duration", "resolution", "inference_steps")

# Upper bounds (seconds) of the duration tag; the value is the first bound >= the clip length.
DURATION_BUCKETS_S: tuple[int, ...] = (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)

_EXPECTED_KEY = "a key of 1-64 characters: letters, digits or '_', not starting with a digit"
_EXPECTED_VALUE = "a value of 1-64 characters: letters, digits, '_', '.', ':' or '-' (no paths, no spaces)"


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise TagError(
            problem=f"profiling tag key {key!r} is not allowed",
            expected=_EXPECTED_KEY,
            fix="rename the tag, e.g. 'team' or 'gpu_pool'",
        )
    if key in RESERVED_KEYS or key.startswith("__"):
        raise TagError(
            problem=f"profiling tag key {key!r} is reserved",
            expected=f"a key other than {', '.join(sorted(RESERVED_KEYS))} or one starting with '__'",
            fix="choose another name; the pack sets stage, duration, resolution and inference_steps itself",
        )
    return key


def _check_value(key: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TagError(
            problem=f"profiling tag {key!r} has a {type(value).__name__} value",
            expected="a string (or an integer)",
            fix=f"write the tag as {key}=value",
        )
    text = str(value)
    if "/" in text or "\\" in text:
        raise TagError(
            problem=f"profiling tag {key!r} looks like a file path ({len(text)} characters with '/' or '\\')",
            expected=_EXPECTED_VALUE,
            fix="tags must not carry file paths; use a short name such as the file's stem without folders",
        )
    if any(ch.isspace() for ch in text):
        raise TagError(
            problem=f"profiling tag {key!r} contains whitespace",
            expected=_EXPECTED_VALUE,
            fix="tags must not carry free text; replace spaces with '_' or '-'",
        )
    if not VALUE_PATTERN.fullmatch(text):
        raise TagError(
            problem=f"profiling tag {key!r} has a value of {len(text)} characters outside the allowed set",
            expected=_EXPECTED_VALUE,
            fix="shorten the value and keep to the listed characters",
        )
    return text


def validate_tags(tags: Mapping[str, object] | None) -> dict[str, str]:
    """User tags checked and returned as `str -> str`; raises `TagError` saying what to change."""
    if not tags:
        return {}
    if len(tags) > MAX_USER_TAGS:
        raise TagError(
            problem=f"{len(tags)} profiling tags were given",
            expected=f"at most {MAX_USER_TAGS} user tags",
            fix="drop the tags you do not filter on",
        )
    return {_check_key(key): _check_value(key, value) for key, value in tags.items()}


def check_run_tags(tags: Mapping[str, object] | None) -> dict[str, str]:
    """A run tag set (as built by `run_tags`): the pack's keys checked by value, the rest as user tags."""
    tags = dict(tags or {})
    own = {key: _check_value(key, tags.pop(key)) for key in PACK_RUN_KEYS if key in tags}
    return {**own, **validate_tags(tags)}


def parse_tag_text(text: str) -> dict[str, str]:
    """Parse `key=value` pairs separated by commas or new lines (the node's text input), then validate."""
    pairs: dict[str, str] = {}
    for item in re.split(r"[,\n]", text or ""):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise TagError(
                problem=f"profiling tag entry {item[:32]!r} is not key=value",
                expected="entries like team=vision, gpu_pool=a100 separated by commas or new lines",
                fix="add '=' between the key and the value",
            )
        if key in pairs:
            raise TagError(
                problem=f"profiling tag {key!r} is given twice",
                expected="each key once",
                fix=f"keep one {key}=... entry",
            )
        pairs[key] = value
    return validate_tags(pairs)


def duration_bucket(seconds: float) -> str:
    """Clip length as a low-cardinality tag value: the smallest bucket bound that holds it, e.g. '10s'."""
    if not math.isfinite(seconds) or seconds < 0:
        return "unknown"
    for bound in DURATION_BUCKETS_S:
        if seconds <= bound:
            return f"{bound}s"
    return f"over{DURATION_BUCKETS_S[-1]}s"


def plan_tags(width: int, height: int, inference_steps: int) -> dict[str, str]:
    """The run tags that follow the memory plan: the frame size and steps actually run (after any downgrade)."""
    return {"resolution": f"{int(width)}x{int(height)}", "inference_steps": str(int(inference_steps))}


def run_tags(
    *,
    duration_s: float,
    width: int,
    height: int,
    inference_steps: int,
    user_tags: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """The tags every stage of one run carries: duration bucket, resolution, steps, validated user tags."""
    tags = {"duration": duration_bucket(duration_s), **plan_tags(width, height, inference_steps)}
    tags.update(validate_tags(user_tags))
    return tags
