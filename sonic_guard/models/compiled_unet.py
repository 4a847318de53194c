"""`compile_unet`: the Sonic UNet through `torch.compile`, an opt-in speed lever that never fails a run.

Compiling costs time on the first call of each window shape (minutes for the full-size UNet); what inductor
built is saved with `torch.compiler.save_cache_artifacts()` into one file beside the run history, keyed by what
changes the compiled graph (UNet config, torch version, device type, dtype, feed-forward chunking), so the next
process loads it (`load_cache_artifacts`) and skips inductor's code generation. Window shapes are fixed (25
frames, the plan's size and CFG batch), hence `dynamic=False`.

Quality-neutral: the compiled graph computes the same maths with other kernels, so results move by float32
noise only (measured in `tests/test_compiled_unet.py`). Everything that can go wrong is a note, not an error:
a corrupt or foreign cache file is ignored and rewritten, a compile failure (no C++ compiler, a dynamo error)
leaves the run eager, and weight streaming (which swaps each block's Parameters while the forward runs, so a
graph compiled against one set of tensors cannot follow) skips compilation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

ARTIFACT_PREFIX = "compiled_unet."
ARTIFACT_SUFFIX = ".bin"
# First bytes of our files: anything else at that path (a truncated write, another program's file) is ignored.
FILE_MAGIC = b"sonic_guard compiled UNet v1\n"
STREAMING_SKIP_NOTE = ("compile_unet skipped: UNet weight streaming swaps each block's weights in while it runs, "
                       "which a compiled graph cannot follow; sampling ran without torch.compile")


def compile_cache_key(unet_config: Mapping[str, Any], *, device_type: str, dtype: torch.dtype,
                      ff_chunk: int | None) -> str:
    """What a compiled UNet graph depends on besides the input shapes (those are inside the artifacts)."""
    blob = json.dumps({"unet": dict(unet_config), "torch": torch.__version__, "device_type": device_type,
                       "dtype": str(dtype), "ff_chunk": ff_chunk}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def artifact_path(cache_dir: Path, key: str) -> Path:
    """The artifact file for `key` in `cache_dir` (the run history's folder)."""
    return Path(cache_dir) / f"{ARTIFACT_PREFIX}{key}{ARTIFACT_SUFFIX}"


@dataclass
class CompileOutcome:
    """What compiling did in one sampling stage, for the run report.

    `compile_s` sums the wall time of each window shape's first compiled call (the call that traces and
    compiles, or loads from the cache); later calls are the steady state and are not in it.
    """

    status: str = "pending"  # pending | compiled | cache_hit | reused | failed | skipped
    compile_s: float = 0.0
    artifacts_loaded: bool = False
    artifact_file: Path | None = None
    saved: bool = False
    problems: list[str] = field(default_factory=list)  # cache file ignored, cache not written, compile error

    def note(self) -> str | None:
        """The report's line (None when the UNet was never called)."""
        seconds = f"{self.compile_s:.1f} s"
        extra = "".join(f"; {problem}" for problem in self.problems)
        if self.status == "cache_hit":
            return f"compiled UNet loaded from cache in {seconds}{extra}"
        if self.status == "compiled":
            where = ("cached for the next run" if self.saved else
                     "not cached across processes: no cache folder" if self.artifact_file is None else
                     "not cached")
            return f"UNet compiled in {seconds} ({where}){extra}"
        if self.status == "reused":
            return f"compiled UNet reused from this process ({seconds} for the first call){extra}"
        if self.status == "failed":
            return f"compile_unet: torch.compile failed, sampling ran without it{extra}"
        if self.status == "skipped":
            return STREAMING_SKIP_NOTE
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "compile_s": round(self.compile_s, 3), "artifacts_loaded": self.artifacts_loaded,
                "saved": self.saved, "problems": list(self.problems)}


class CompiledUNetForward(nn.Module):
    """Calls the compiled UNet; the first call of each input shape is timed into `outcome`. On any compile or
    run error but out-of-memory it logs a warning and goes on with the eager UNet for good."""

    def __init__(self, unet: nn.Module, compiled: Callable[..., torch.Tensor] | None, outcome: CompileOutcome
                 ) -> None:
        super().__init__()
        self.unet = unet
        self._compiled: Callable[..., torch.Tensor] | None = compiled
        self.outcome = outcome
        self._seen: set[tuple[Any, ...]] = set()
        self.fresh_compiles = 0  # compile calls that ran inductor's code generation (cache misses)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._compiled is None:
            return self.unet(*args, **kwargs)
        signature = _signature(args, kwargs)
        if signature in self._seen:
            return self._call_compiled(args, kwargs)
        before = _fx_cache_counts()
        start = time.perf_counter()
        result = self._call_compiled(args, kwargs)
        if self._compiled is not None:  # it compiled (or loaded) and ran
            self._seen.add(signature)
            self.outcome.compile_s += time.perf_counter() - start
            hits, misses = (after - earlier for after, earlier in zip(_fx_cache_counts(), before, strict=True))
            self.fresh_compiles += misses
            self.outcome.status = _merged_status(self.outcome.status, hits, misses)
        return result

    def _call_compiled(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        assert self._compiled is not None
        try:
            return self._compiled(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise  # the run's OOM recovery handles it like any UNet OOM
        except Exception as error:  # an opt-in speed lever must never fail the run
            logger.warning("torch.compile of the UNet failed; sampling goes on without it", exc_info=True)
            self._compiled = None
            self.outcome.status = "failed"
            cause = getattr(error, "inner_exception", None) or error.__cause__ or error  # dynamo wraps the cause
            self.outcome.problems.append(f"{type(cause).__name__}: {_first_line(cause)}")
        return self.unet(*args, **kwargs)


@contextlib.contextmanager
def compiled_unet(unet: nn.Module, device: torch.device, cache_dir: Path | None, *, weight_streaming: bool = False,
                  backend: str | Callable[..., Any] = "inductor") -> Iterator[CompiledUNetForward]:
    """The UNet's forward through `torch.compile` (mode default, `dynamic=False`) for one sampling stage.

    The UNet must already be on `device` with its feed-forward chunking set (both are part of the cache key).
    With `cache_dir`, artifacts saved by an earlier process are loaded first, and after a fresh compile the
    process's artifacts are written there (atomically). `outcome.note()` says what happened; nothing raises.
    With `weight_streaming` (or a UNet whose blocks are streamed) the eager UNet is used and the outcome says so.
    """
    outcome = CompileOutcome()
    if weight_streaming or getattr(unet, "block_residency", None) is not None:
        outcome.status = "skipped"
        yield CompiledUNetForward(unet, None, outcome)
        return
    dtype = next(unet.parameters()).dtype
    key = compile_cache_key(getattr(unet, "config", {}), device_type=device.type, dtype=dtype,
                            ff_chunk=getattr(unet, "feed_forward_chunks", None))
    if cache_dir is not None:
        outcome.artifact_file = artifact_path(cache_dir, key)
        outcome.artifacts_loaded = _load_artifacts(outcome)
    forward = CompiledUNetForward(unet, torch.compile(unet.forward, dynamic=False, backend=backend), outcome)
    try:
        yield forward
    finally:
        if forward.fresh_compiles and outcome.artifact_file is not None and outcome.status != "failed":
            outcome.saved = _save_artifacts(outcome)
        if outcome.note():
            logger.info("%s", outcome.note())


def _load_artifacts(outcome: CompileOutcome) -> bool:
    path = outcome.artifact_file
    assert path is not None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as error:
        return _ignored(outcome, path, f"unreadable ({error})")
    if not data.startswith(FILE_MAGIC):
        return _ignored(outcome, path, "not a compiled-UNet cache file of this version")
    try:
        info = torch.compiler.load_cache_artifacts(data[len(FILE_MAGIC):])
    except Exception as error:  # a bad cache file means compiling afresh, never a failed run
        return _ignored(outcome, path, f"could not be loaded ({type(error).__name__}: {_first_line(error)})")
    if info is None:
        return _ignored(outcome, path, "could not be loaded (torch rejected its contents)")
    return True


def _ignored(outcome: CompileOutcome, path: Path, why: str) -> bool:
    logger.warning("compiled-UNet cache %s ignored, compiling afresh and rewriting it: %s", path, why)
    outcome.problems.append(f"cache file {path.name} was {why}; it is rewritten")
    return False


def _save_artifacts(outcome: CompileOutcome) -> bool:
    path = outcome.artifact_file
    assert path is not None
    try:
        saved = torch.compiler.save_cache_artifacts()
    except Exception as error:  # not saved only costs the next process a compile
        logger.warning("torch could not serialise the compiled UNet: %s", error)
        saved = None
    if saved is None:
        outcome.problems.append("torch produced no cache artifacts to save")
        return False
    try:
        _write_atomic(path, FILE_MAGIC + saved[0])
    except OSError as error:
        logger.warning("compiled-UNet cache %s not written: %s", path, error)
        outcome.problems.append(f"cache file not written ({error})")
        return False
    return True


def _write_atomic(path: Path, data: bytes) -> None:
    """Temporary file + `os.replace`: a reader never sees a torn file; the last writer wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the history beside it is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fx_cache_counts() -> tuple[int, int]:
    """Inductor's FX-graph cache hits and misses so far in this process (a miss is a fresh code generation)."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]


def _merged_status(status: str, hits: int, misses: int) -> str:
    """One status over every window shape: any fresh compile makes it "compiled"; all from cache, "cache_hit";
    nothing compiled or loaded (dynamo's in-process code reused), "reused"."""
    this = "compiled" if misses else "cache_hit" if hits else "reused"
    rank = {"pending": 0, "reused": 1, "cache_hit": 2, "compiled": 3}
    return this if rank[this] > rank.get(status, 0) else status


def _signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    def one(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return tuple(value.shape), value.dtype, value.device.type
        return type(value).__name__ if isinstance(value, float) else value

    return tuple(one(value) for value in args) + tuple((name, one(value)) for name, value in sorted(kwargs.items()))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else ""
