"""Pre-flight in fresh processes, as a user meets it: cold (no estimate cache) and after a server restart.

Cold: the full-size 1024^2 plan on 8 GiB gives exactly the bytes the estimator gave before the restart path was
made import-free (pinned below). Restart: a new interpreter with the cold run's cache file answers the same plan
without simulating and without importing diffusers or transformers. No timing is asserted (see
bench/bench_estimator.py for the seconds).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
FREE_BYTES = 8 * GIB

# The same pre-flight the bench times: the 1024^2 request on 8 GiB, cudaMallocAsync overhead, with a cache file.
PREFLIGHT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from sonic_guard.memory.estimate_cache import EstimateCache
    from sonic_guard.memory.estimator import MemoryEstimator
    from sonic_guard.memory.plan import RunRequest
    from sonic_guard.memory.planner import plan_run
    from sonic_guard.models.configs import ModelConfigs
    estimator = MemoryEstimator(ModelConfigs.full_size(), allocator="cudaMallocAsync",
                                cache=EstimateCache(sys.argv[2]))
    request = RunRequest(image_width=1024, image_height=1024, min_resolution=1024, audio_seconds=10.0)
    decision = plan_run(request, int(sys.argv[3]), estimator)
    print(json.dumps({"misses": estimator.cache.misses, "built": estimator._models is not None,
                      "imported": sorted(m for m in ("diffusers", "transformers") if m in sys.modules),
                      "decision": decision.to_dict()}))
""")

# Bytes from the estimator at commit 9f9628d (before lazy imports), the same request in a fresh process:
# the chosen plan's (weights, activation) per simulated stage. A cache miss must still give exactly these.
# The rungs' peaks as of commit 44475aa, which added the composed decode_interpolate stage (decode beside
# interpolation: both stages' models and activations); until then the ff_chunk and cfg_batch rungs were
# 19364109312 and 9914027827 (the largest stage of those rungs is now the composed one), the others unchanged.
PINNED_RUNGS = [
    ["requested", 27687496614], ["offload_idle_models: off→on", 26097808486], ["ff_chunk: None→4", 19756931072],
    ["decode_chunk: 8→4", 16581981286], ["cfg_batch: 3→1", 10306849587], ["decode_chunk: 4→2", 7912764774],
    ["unet_weight_offload: off→on", 6390194022],
]
COMPOSED_STAGE, COMPOSED_OF = "decode_interpolate", ("vae_decode", "interpolate")  # not simulated: a sum
PINNED_STAGES = {
    "face_detect": [85000000, 0], "clip_encode": [1264156160, 8196096], "audio_features": [32833536, 35532288],
    "vae_encode": [195509760, 1348468736], "unet_window": [1781189120, 3945972224],
    "vae_decode": [195509760, 4295492608], "interpolate": [12188672, 346030080],
}


def fresh_preflight(cache_path: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PREFLIGHT, str(ROOT), str(cache_path), str(FREE_BYTES)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def without_timing(decision: dict) -> dict:
    data = dict(decision)
    data["estimate"] = {k: v for k, v in data["estimate"].items() if k not in ("simulated_seconds", "cache_hits")}
    return data


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    cache_path = tmp_path_factory.mktemp("cold") / "estimate_cache.json"
    return fresh_preflight(cache_path), cache_path


def test_a_cold_preflight_gives_the_pinned_bytes(cold: tuple[dict, Path]) -> None:
    answer, cache_path = cold
    decision = answer["decision"]
    assert answer["misses"] > 0 and answer["built"] and cache_path.exists()
    assert [[r["step"], r["peak_bytes"]] for r in decision["rungs"]] == PINNED_RUNGS
    stages = dict(decision["estimate"]["stages"])  # a copy: the restart test compares the fixture's whole dict
    composed = stages.pop(COMPOSED_STAGE, None)
    assert {name: [s["weights_bytes"], s["activation_bytes"]] for name, s in stages.items()} == PINNED_STAGES
    if composed is not None:  # present when the chosen plan overlaps decode and interpolation
        parts = [stages[name] for name in COMPOSED_OF]
        assert [composed["weights_bytes"], composed["activation_bytes"]] == [
            sum(s["weights_bytes"] for s in parts), sum(s["activation_bytes"] for s in parts)]
    assert decision["estimate"]["peak_bytes"] == PINNED_RUNGS[-1][1]


def test_a_restart_plans_from_the_file_without_diffusers_or_transformers(cold: tuple[dict, Path]) -> None:
    answer, cache_path = cold
    restart = fresh_preflight(cache_path)
    assert restart["imported"] == [], f"a cache hit imported {restart['imported']}"
    assert restart["misses"] == 0 and not restart["built"]
    # The same plan dict, rungs included (every rung's figures are in the file): only wall-clock fields differ.
    assert without_timing(restart["decision"]) == without_timing(answer["decision"])
