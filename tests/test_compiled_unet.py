"""compile_unet: the compiled UNet gives the eager result within measured float32 noise, its artifacts make a fresh
process's compile a cache hit, and nothing about it can fail a run (corrupt cache file, compile error, weight
streaming).

One small UNet (two blocks: cross-attention down/up and plain down/up) is compiled once per module on the CPU;
inductor's own cache goes to a temporary folder for the module, so no test reads a cache another test run left.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from numerics import fp32_tolerance
from test_distributed_windows import CPU, SEED, models, run_inputs  # noqa: F401 - fixtures

from sonic_guard.models.compiled_unet import (
    FILE_MAGIC,
    STREAMING_SKIP_NOTE,
    artifact_path,
    compile_cache_key,
    compiled_unet,
)
from sonic_guard.models.configs import TINY_UNET_CONFIG
from sonic_guard.models.unet import build_sonic_unet
from sonic_guard.models.weight_streaming import stream_weights
from sonic_guard.runs.pipeline import default_placer, sample_clip
from sonic_guard.runs.runtime import RunHooks
from sonic_guard.settings import GenerationSettings

REPO = Path(__file__).resolve().parents[1]
# Two blocks instead of four: the compile of the four-block tiny UNet takes ~3.5 min on 2 CPU cores, this ~2 min.
SMALL_UNET = {
    **TINY_UNET_CONFIG,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
    "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
    "block_out_channels": [32, 32], "num_attention_heads": [2, 2], "layers_per_block": 1,
}
DIM = int(TINY_UNET_CONFIG["cross_attention_dim"])

# Run in a fresh interpreter: build the same UNet, compile it with the cache file, print the outcome.
FRESH_PROCESS = """
import json, sys, torch
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from sonic_guard.models.compiled_unet import compiled_unet
from sonic_guard.models.unet import build_sonic_unet
work = Path(sys.argv[3])
unet = build_sonic_unet(json.loads((work / "config.json").read_text()))
unet.load_state_dict(torch.load(work / "unet.pt"))
with torch.no_grad(), compiled_unet(unet, torch.device("cpu"), Path(sys.argv[2])) as forward:
    out = forward(*torch.load(work / "inputs.pt"))
torch.save(out, work / "out.pt")
print(json.dumps(forward.outcome.to_dict()))
"""


def small_unet(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_sonic_unet(SMALL_UNET, dtype=dtype)


def unet_inputs(dtype: torch.dtype = torch.float32) -> tuple:
    """One CFG-batch-3 window of 4 frames at an 8 x 8 latent, with a face mask (as the denoiser calls it)."""
    generator = torch.Generator().manual_seed(1)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(dtype)

    return (randn(3, 4, 8, 8, 8), torch.tensor(700.0, dtype=torch.float32), randn(3, 1, DIM), randn(3, 4, 4, DIM),
            torch.tensor([[6.0, 30.0, 30.0]] * 3, dtype=dtype), torch.rand(1, 1, 64, 64, generator=generator).to(dtype))


@pytest.fixture(scope="module", autouse=True)
def _dynamo_state_reset() -> Iterator[None]:
    """Later test modules must not inherit this module's compiled frames and guards."""
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def inductor_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Inductor's on-disk cache for this module only (restored afterwards)."""
    folder = tmp_path_factory.mktemp("inductor")
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


@pytest.fixture(scope="module")
def first_compile(inductor_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The module's one real compile, with a cache folder: eager, compiled and float64 outputs and the outcome."""
    cache_dir = tmp_path_factory.mktemp("history")
    unet = small_unet()
    inputs = unet_inputs()
    with torch.no_grad():
        eager = unet(*inputs)
        fp64 = small_unet(torch.float64)(*unet_inputs(torch.float64))
        with compiled_unet(unet, torch.device("cpu"), cache_dir) as forward:
            compiled = forward(*inputs)
            again = forward(*inputs)
    logging.getLogger(__name__).info("first compile: %s", forward.outcome.to_dict())
    return {"unet": unet, "inputs": inputs, "eager": eager, "fp64": fp64, "compiled": compiled, "again": again,
            "outcome": forward.outcome, "cache_dir": cache_dir}


def test_compiled_window_equals_eager_within_measured_fp32_noise(first_compile: dict) -> None:
    outcome = first_compile["outcome"]
    assert outcome.status == "compiled" and outcome.compile_s > 0, outcome
    assert outcome.saved and outcome.note().startswith("UNet compiled in ")
    assert "cached for the next run" in outcome.note()
    eager, compiled, fp64 = first_compile["eager"], first_compile["compiled"], first_compile["fp64"]
    tolerance = fp32_tolerance(eager, fp64)
    assert float((compiled - eager).abs().max()) <= tolerance
    assert float((compiled.double() - fp64).abs().max()) <= tolerance
    assert torch.equal(first_compile["again"], compiled)  # the steady state runs the same kernels


def compile_in_fresh_process(work: Path, cache_dir: Path, inductor: Path) -> dict:
    """Compile the module's UNet (weights and inputs saved in `work`) in a new interpreter; its outcome."""
    # inductor's CPU kernels are generated for the thread count, which is part of their cache key
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(REPO), str(cache_dir), str(work)],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_fresh_process_loads_the_saved_artifacts_as_a_cache_hit(first_compile: dict, tmp_path: Path) -> None:
    # Writer and reader are both fresh interpreters: in this pytest process the same graph gets another FX-cache
    # key than in a plain interpreter (not diagnosed), and a server is a plain interpreter.
    (tmp_path / "config.json").write_text(json.dumps(SMALL_UNET))
    torch.save(first_compile["unet"].state_dict(), tmp_path / "unet.pt")
    torch.save(first_compile["inputs"], tmp_path / "inputs.pt")
    cache_dir, writer_inductor = tmp_path / "history", tmp_path / "inductor_writer"
    written = compile_in_fresh_process(tmp_path, cache_dir, writer_inductor)
    assert written["status"] == "compiled" and written["saved"], written
    files = list(cache_dir.glob("compiled_unet.*.bin"))
    assert len(files) == 1 and files[0].read_bytes().startswith(FILE_MAGIC)
    # The reader's inductor cache keeps the compiled C++ kernels (a second gcc pass would double the test's time)
    # but not inductor's graph caches: a hit can only come from our artifact file.
    reader_inductor = tmp_path / "inductor_reader"
    shutil.copytree(writer_inductor, reader_inductor, ignore=shutil.ignore_patterns("fxgraph", "aotautograd"))
    outcome = compile_in_fresh_process(tmp_path, cache_dir, reader_inductor)
    assert outcome["status"] == "cache_hit" and outcome["artifacts_loaded"] and not outcome["problems"], outcome
    assert not outcome["saved"]  # nothing new to write after a full hit
    child = torch.load(tmp_path / "out.pt")
    eager = first_compile["eager"]
    assert float((child - eager).abs().max()) <= fp32_tolerance(eager, first_compile["fp64"])


@pytest.mark.parametrize("content", [b"not ours at all", FILE_MAGIC + b"\x00\x01 truncated pickle"],
                         ids=["foreign", "corrupt"])
def test_a_corrupt_artifact_file_is_ignored_with_a_warning_and_the_run_works(
        first_compile: dict, tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    unet = first_compile["unet"]
    key = compile_cache_key(unet.config, device_type="cpu", dtype=torch.float32, ff_chunk=None)
    artifact_path(tmp_path, key).write_bytes(content)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        with compiled_unet(unet, torch.device("cpu"), tmp_path) as forward:
            result = forward(*first_compile["inputs"])
    assert "ignored" in caplog.text and artifact_path(tmp_path, key).name in caplog.text
    outcome = forward.outcome
    assert not outcome.artifacts_loaded and outcome.status in ("reused", "cache_hit", "compiled"), outcome
    assert "it is rewritten" in outcome.note()
    assert torch.equal(result, first_compile["compiled"])


# A backend that fails, in a fresh interpreter: a compile that failed mid-trace leaves torch state behind that moves
# later meta-device simulations in the same process (seen: the tiny UNet's CFG activation ratio 2.95 -> 3.07).
FAILING_COMPILE = """
import json, logging, sys, torch
from pathlib import Path
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level=logging.WARNING)
from sonic_guard.models.compiled_unet import compiled_unet
from sonic_guard.models.unet import build_sonic_unet
work = Path(sys.argv[2])
unet = build_sonic_unet(json.loads((work / "config.json").read_text()))
unet.load_state_dict(torch.load(work / "unet.pt"))
def broken_backend(graph, example_inputs):
    raise RuntimeError("no C++ compiler here")
inputs = torch.load(work / "inputs.pt")
with torch.no_grad(), compiled_unet(unet, torch.device("cpu"), work / "history", backend=broken_backend) as forward:
    torch.save([forward(*inputs), forward(*inputs)], work / "out.pt")
print(json.dumps({**forward.outcome.to_dict(), "note": forward.outcome.note()}))
"""


def test_a_failing_compile_leaves_the_run_eager_with_a_note(first_compile: dict, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(SMALL_UNET))
    torch.save(first_compile["unet"].state_dict(), tmp_path / "unet.pt")
    torch.save(first_compile["inputs"], tmp_path / "inputs.pt")
    done = subprocess.run([sys.executable, "-c", FAILING_COMPILE, str(REPO), str(tmp_path)], capture_output=True,
                          text=True, timeout=600, check=True)
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    first, second = torch.load(tmp_path / "out.pt")
    assert torch.equal(first, first_compile["eager"]) and torch.equal(second, first_compile["eager"])
    assert outcome["status"] == "failed" and "sampling ran without it" in outcome["note"]
    assert "no C++ compiler here" in outcome["note"]
    assert not list((tmp_path / "history").glob("compiled_unet.*"))  # nothing half-made is cached
    assert "torch.compile of the UNet failed" in done.stderr


def test_weight_streaming_skips_compilation() -> None:
    unet = small_unet()
    inputs = unet_inputs()
    with torch.no_grad():
        eager = unet(*inputs)
        with stream_weights(unet, torch.device("cpu")), compiled_unet(unet, torch.device("cpu"), None) as forward:
            streamed = forward(*inputs)
    assert forward.outcome.status == "skipped" and forward.outcome.note() == STREAMING_SKIP_NOTE
    assert torch.equal(streamed, eager)


def test_sample_clip_with_compile_and_weight_streaming_runs_eager_and_reports_the_skip(models, run_inputs  # noqa: F811
                                                                                       ) -> None:
    conditioning, settings, plan = run_inputs
    plan = replace(plan, unet_weight_offload=True, inference_steps=1)
    adjustments: list[tuple[str, dict]] = []
    hooks = RunHooks(on_adjustment=lambda kind, details: adjustments.append((kind, details)))

    def sample(run_settings: GenerationSettings, run_hooks: RunHooks) -> torch.Tensor:
        return sample_clip(models, conditioning, run_settings, plan, default_placer(CPU, plan), CPU, run_hooks,
                           seed=SEED, on_window=lambda done, total: None)

    compiled = sample(replace(settings, compile_unet=True), hooks)
    assert torch.equal(compiled, sample(settings, RunHooks()))
    assert [(kind, details["note"], details["status"]) for kind, details in adjustments] == [
        ("unet_compile", STREAMING_SKIP_NOTE, "skipped")]


def test_compile_unet_leaves_default_settings_and_their_fingerprint_unchanged() -> None:
    assert "compile_unet" not in GenerationSettings().to_dict()
    assert sorted(GenerationSettings().to_dict()) == sorted([
        "duration", "min_resolution", "expand_ratio", "crop_face", "inference_steps", "dynamic_scale", "motion_scale",
        "seed", "lip_sync_correction", "smooth_motion", "interpolation", "interpolation_fallback", "ip_audio_scale"])
    assert GenerationSettings(compile_unet=True).to_dict()["compile_unet"] is True


def test_the_cache_key_follows_what_changes_the_graph() -> None:
    base = {"device_type": "cuda", "dtype": torch.float16, "ff_chunk": None}
    key = compile_cache_key(SMALL_UNET, **base)
    assert key == compile_cache_key(dict(SMALL_UNET), **base)
    assert len({key, compile_cache_key(SMALL_UNET, **{**base, "ff_chunk": 4}),
                compile_cache_key(SMALL_UNET, **{**base, "dtype": torch.float32}),
                compile_cache_key(SMALL_UNET, **{**base, "device_type": "cpu"}),
                compile_cache_key(TINY_UNET_CONFIG, **base)}) == 5
