"""The persistent estimate cache and the meta-op memo: shortcuts that must never change a figure.

A hit gives the decision a miss gives; the scope changes with the model config, package versions and allocator
settings; a bad file is ignored (logged) and rebuilt; concurrent writers leave a readable file; a fresh process
(a server restart) plans from the file without simulating. No timing is asserted (see bench/bench_estimator.py).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from sonic_guard.memory import stage_simulation as stages
from sonic_guard.memory.estimate_cache import (
    CACHE_FORMAT,
    EstimateCache,
    estimate_scope,
    package_version,
    scope_id,
)
from sonic_guard.memory.estimator import MemoryEstimator
from sonic_guard.memory.fitted_corrections import AllocatorCalibration
from sonic_guard.memory.meta_models import MetaModels
from sonic_guard.memory.plan import ExecutionPlan
from sonic_guard.memory.preflight import comparable, decide, inputs_from_widgets
from sonic_guard.models.configs import ModelConfigs

ROOT = Path(__file__).resolve().parents[1]
WIDGETS = {"min_resolution": 256, "inference_steps": 10, "interpolation": "rife", "duration": 4.0,
           "memory_policy": "auto", "preset": "custom"}
NO_OVERHEAD = AllocatorCalibration(fixed_bytes=0, fragmentation=0.0)


def tiny_estimator(cache: EstimateCache | None, configs: ModelConfigs | None = None) -> MemoryEstimator:
    return MemoryEstimator(configs or ModelConfigs.tiny(), NO_OVERHEAD, device_type="cuda", allocator="native",
                           cache=cache)


def plan_decision(estimator: MemoryEstimator, free: int) -> dict:
    inputs = inputs_from_widgets(WIDGETS, dtype="float16", device_type="cuda")
    return decide(inputs, free, estimator).to_dict()


@pytest.fixture(scope="module")
def requested_peak() -> int:
    """The requested plan's peak: free memory below it makes the planner walk its ladder."""
    inputs = inputs_from_widgets({**WIDGETS, "memory_policy": "off"}, dtype="float16", device_type="cuda")
    return decide(inputs, 2**40, tiny_estimator(None)).estimate.peak_bytes


def test_a_hit_gives_the_decision_a_miss_gives_without_simulating(tmp_path: Path, requested_peak: int) -> None:
    cache = EstimateCache(tmp_path / "estimate_cache.json")
    free = int(requested_peak * 0.85)  # needs levers (the tiny model fits with ff_chunk)
    cold = tiny_estimator(cache)
    missed = plan_decision(cold, free)
    assert cold.cache.misses > 0 and missed["levers_applied"]
    warm = tiny_estimator(cache)
    hit = plan_decision(warm, free)
    assert warm.cache.misses == 0 and warm.op_memo.misses == 0  # nothing simulated, no module built
    assert comparable(hit) == comparable(missed)
    assert [r["peak_bytes"] for r in hit["rungs"]] == [r["peak_bytes"] for r in missed["rungs"]]
    assert hit == {**missed, "estimate": {**missed["estimate"], **{k: hit["estimate"][k] for k in (
        "simulated_seconds", "cache_hits")}}}


def test_the_memo_and_the_cache_change_no_simulated_byte(tmp_path: Path) -> None:
    """Every stage's activation through the estimator (memo on, then read back from the file) equals a plain
    simulation of the same modules with neither."""
    configs = ModelConfigs.tiny()
    plain_models = MetaModels(configs)
    cache = EstimateCache(tmp_path / "estimate_cache.json")
    plans = [ExecutionPlan(width=256, height=192, dtype="float16"),
             ExecutionPlan(width=256, height=192, dtype="float16", cfg_batch=1, ff_chunk=2, decode_chunk=3),
             ExecutionPlan(width=128, height=128, dtype="float32", attention="math"),
             ExecutionPlan(width=192, height=256, dtype="bfloat16", attention="mem_efficient", decode_chunk=1)]
    memoized = tiny_estimator(cache)
    for plan in plans:
        dtype = plan.torch_dtype
        plain = {
            "unet_window": stages.simulate_unet_window(plain_models.get("unet", dtype), plan, configs, 512),
            "vae_decode": stages.simulate_vae_decode(plain_models.get("vae", dtype), plan, 512),
            "vae_encode": stages.simulate_vae_encode(plain_models.get("vae", dtype), plan, 512),
            "clip_encode": stages.simulate_clip(plain_models.get("clip", dtype), plan, 512),
            "interpolate": stages.simulate_interpolation(plain_models.get("rife", stages.RIFE_DTYPE), plan, 512),
        }
        for estimator in (memoized, tiny_estimator(cache)):  # the second reads the figures back from the file
            estimate = estimator.estimate(plan, exact=True)
            assert {name: estimate.stages[name].activation_bytes for name in plain} == plain, plan
    assert memoized.op_memo.hits > memoized.op_memo.misses  # the memo was really used


def test_the_scope_changes_with_config_versions_and_allocator_settings(tmp_path: Path, monkeypatch) -> None:
    base = estimate_scope("config-a", device_type="cuda", block=512, alloc_conf="")
    assert base["torch"] == package_version("torch")
    variants = [
        estimate_scope("config-b", device_type="cuda", block=512, alloc_conf=""),
        estimate_scope("config-a", device_type="cuda", block=512, alloc_conf="expandable_segments:True"),
        estimate_scope("config-a", device_type="cuda", block=512, alloc_conf="",
                       versions={**{k: base[k] for k in ("diffusers", "transformers")}, "torch": "0.0.1"}),
        estimate_scope("config-a", device_type="cpu", block=1, alloc_conf=""),
    ]
    assert len({scope_id(s) for s in [base, *variants]}) == 5
    cache = EstimateCache(tmp_path / "estimate_cache.json")
    cache.store(base, {"a:x": 1})
    assert cache.load(base) == {"a:x": 1}
    assert all(cache.load(s) == {} for s in variants)

    # Through the estimator: another model config or allocator setting simulates again, the same one does not.
    plan = ExecutionPlan(width=128, height=128, dtype="float16")
    tiny_estimator(cache).estimate(plan, exact=True)
    assert tiny_estimator(cache).estimate(plan, exact=True).cache_hits > 0
    other_config = tiny_estimator(cache, replace(ModelConfigs.tiny(), window_frames=3))
    other_config.estimate(plan, exact=True)
    assert other_config.cache.misses > 0
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    other_allocator = tiny_estimator(cache)
    other_allocator.estimate(plan, exact=True)
    assert other_allocator.cache.misses > 0


@pytest.mark.parametrize("content", [
    b"\x00\xff garbage \x89PNG",
    b'{"format": 1, "scopes": {"abc": {"scope": {}, "used": 1.0, "entries": {"a:x": 1',  # truncated
    json.dumps({"format": CACHE_FORMAT + 1, "scopes": {}}).encode(),  # a newer version's file
    json.dumps({"format": CACHE_FORMAT, "scopes": {"s": {"scope": {}, "used": 1, "entries": {"a:x": "1"}}}}).encode(),
    json.dumps([1, 2, 3]).encode(),
    b"",
])
def test_a_bad_file_is_ignored_with_a_log_line_and_rebuilt(tmp_path: Path, content: bytes, caplog) -> None:
    path = tmp_path / "estimate_cache.json"
    path.write_bytes(content)
    plan = ExecutionPlan(width=128, height=128, dtype="float16")
    expected = tiny_estimator(None).estimate(plan, exact=True).peak_bytes
    with caplog.at_level(logging.WARNING, logger="sonic_guard.memory.estimate_cache"):
        rebuilt = tiny_estimator(EstimateCache(path))
        assert rebuilt.estimate(plan, exact=True).peak_bytes == expected
    assert any("estimate cache" in record.getMessage() for record in caplog.records)
    assert json.loads(path.read_text())["format"] == CACHE_FORMAT  # rewritten whole
    again = tiny_estimator(EstimateCache(path))
    assert again.estimate(plan, exact=True).peak_bytes == expected and again.cache.misses == 0


def test_unreadable_figure_names_are_skipped_and_simulated(tmp_path: Path, caplog) -> None:
    """A well-formed file whose names this version cannot parse (a foreign writer): skipped with a log line."""
    cache = EstimateCache(tmp_path / "estimate_cache.json")
    scope = estimate_scope(ModelConfigs.tiny().fingerprint(), device_type="cuda", block=512)
    cache.store(scope, {"a:{not json": 7, "a:[1]": 8, "x:other": 9})
    plan = ExecutionPlan(width=128, height=128, dtype="float16")
    expected = tiny_estimator(None).estimate(plan, exact=True).peak_bytes
    with caplog.at_level(logging.WARNING, logger="sonic_guard.memory.estimator"):
        estimator = tiny_estimator(cache)
        assert estimator.estimate(plan, exact=True).peak_bytes == expected
    assert estimator.cache.misses > 0
    assert any("unreadable figures" in record.getMessage() for record in caplog.records)


def test_the_file_stays_bounded_and_keeps_the_newest_scope(tmp_path: Path) -> None:
    cache = EstimateCache(tmp_path / "estimate_cache.json", max_entries=10)
    scopes = [estimate_scope(f"config-{i}", device_type="cuda", block=512, alloc_conf="") for i in range(5)]
    for scope in scopes:
        cache.store(scope, {f"a:{n}": n for n in range(4)})
    document = json.loads(cache.path.read_text())
    assert sum(len(s["entries"]) for s in document["scopes"].values()) <= 10
    assert cache.load(scopes[-1]) == {f"a:{n}": n for n in range(4)}
    assert cache.load(scopes[0]) == {}
    cache.store(scopes[-1], {f"b:{n}": n for n in range(30)})  # one scope beyond the bound keeps its newest
    assert cache.load(scopes[-1]) == {f"b:{n}": n for n in range(20, 30)}


WRITER = textwrap.dedent("""
    import sys
    from sonic_guard.memory.estimate_cache import EstimateCache
    path, writer = sys.argv[1], int(sys.argv[2])
    cache = EstimateCache(path, max_entries=10_000)
    scope = {"config": f"writer-{writer}"}
    for n in range(60):
        cache.store(scope, {f"a:{writer}:{n}": n})
""")


def test_concurrent_writers_never_leave_a_torn_file(tmp_path: Path, caplog) -> None:
    path = tmp_path / "estimate_cache.json"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(i)], cwd=ROOT) for i in range(4)]
    reader = EstimateCache(path)
    with caplog.at_level(logging.WARNING, logger="sonic_guard.memory.estimate_cache"):
        while any(w.poll() is None for w in writers):
            for i in range(4):
                reader.load({"config": f"writer-{i}"})  # each read sees a whole document or none
    assert [w.returncode for w in writers] == [0] * 4
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    document = json.loads(path.read_text())
    assert document["format"] == CACHE_FORMAT and document["scopes"]
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
    for i in range(4):  # a writer's own last figure may be lost to another's replace, never half-written
        entries = reader.load({"config": f"writer-{i}"})
        assert all(entries[f"a:{i}:{n}"] == n for n in range(60) if f"a:{i}:{n}" in entries)


RESTART = textwrap.dedent("""
    import json, sys
    from sonic_guard.memory.fitted_corrections import AllocatorCalibration
    from sonic_guard.memory.estimate_cache import EstimateCache
    from sonic_guard.memory.estimator import MemoryEstimator
    from sonic_guard.memory.meta_models import ModelConfigs
    from sonic_guard.memory.preflight import decide, inputs_from_widgets
    estimator = MemoryEstimator(ModelConfigs.tiny(), AllocatorCalibration(fixed_bytes=0, fragmentation=0.0),
                                device_type="cuda", allocator="native", cache=EstimateCache(sys.argv[1]))
    widgets = json.loads(sys.argv[2])
    decision = decide(inputs_from_widgets(widgets, dtype="float16", device_type="cuda"), int(sys.argv[3]),
                      estimator)
    print(json.dumps({"misses": estimator.cache.misses, "built": len(estimator.models._modules),
                      "decision": decision.to_dict()}))
""")


def test_a_restarted_process_plans_from_the_file(tmp_path: Path, requested_peak: int) -> None:
    path = tmp_path / "estimate_cache.json"
    free = int(requested_peak * 0.85)
    missed = plan_decision(tiny_estimator(EstimateCache(path)), free)
    done = subprocess.run([sys.executable, "-c", RESTART, str(path), json.dumps(WIDGETS), str(free)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=True)
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["misses"] == 0 and answer["built"] == 0
    assert comparable(answer["decision"]) == comparable(missed)
