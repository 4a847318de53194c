"""Two real ComfyUI workers with the pack behind a real HAProxy (Debian's, docs/fleet/haproxy.cfg), health-checked
through /sonic/health: a bounded load test, then one worker killed with SIGKILL in the middle of a batch.

Every job must finish exactly once (one `done` line per job in the client's state file), the job that was on the
dead worker on another worker, no download left half-written, and HAProxy must mark the dead worker DOWN within
`fall` checks of `inter` (plus one interval of phase and the scheduling slack of a busy 2-core box).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from comfy_host import ComfyServer
from conftest import ALL_NODE_IDS, speak
from fleet_harness import (
    HAPROXY,
    HAProxy,
    StateSummary,
    leftover_partials,
    make_pairs,
    percentile,
    run_batch,
    start_workers,
    stop_all,
)

from sonic_guard.client.batch import STATE_FILE_NAME

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed: run scripts/setup.sh")

CHECK_INTERVAL_S = 0.5
FALL = 2  # docs/fleet/haproxy.cfg: `fall 2`
# DOWN after FALL failed checks; the first may come up to one interval after the kill; 1 s for a loaded box.
DOWN_WITHIN_S = FALL * CHECK_INTERVAL_S + CHECK_INTERVAL_S + 1.0
LOAD_JOBS = 16  # the bench runs 40; 16 keep this test near a minute on a 2-core box


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[tuple[dict[str, ComfyServer],
                                                                                         HAProxy]]:
    root = tmp_path_factory.mktemp("fleet")
    workers = start_workers(root, 2, tiny_models, required_nodes=ALL_NODE_IDS)
    named = {f"worker{number:02d}": worker for number, worker in enumerate(workers, start=1)}
    try:
        proxy = HAProxy.start(root / "haproxy", [(name, w.port) for name, w in named.items()],
                              check_interval=f"{int(CHECK_INTERVAL_S * 1000)}ms")
        try:
            yield named, proxy
        finally:
            proxy.stop()
    finally:
        stop_all(workers)


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak(tmp_path_factory.mktemp("fleet_audio") / "hi.wav", "Hi.")


def ffprobe_kinds(path: Path) -> list[str]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
                         check=True, capture_output=True, text=True)
    return sorted(stream["codec_type"] for stream in json.loads(out.stdout)["streams"])


def assert_each_job_once(out_dir: Path, names: list[str]) -> StateSummary:
    summary = StateSummary.read(out_dir / STATE_FILE_NAME)
    assert sorted(summary.done) == names
    assert all(len(lines) == 1 for lines in summary.done.values()), summary.done
    assert leftover_partials(out_dir) == []
    for name in names:
        [video] = (out_dir / name).glob("*.mp4")
        assert ffprobe_kinds(video) == ["audio", "video"], video
    return summary


def test_load_spreads_over_both_workers_and_loses_nothing(
    fleet: tuple[dict[str, ComfyServer], HAProxy], portrait_png: Path, short_speech: Path, tmp_path: Path
) -> None:
    workers, proxy = fleet
    pairs = make_pairs(tmp_path / "pairs", LOAD_JOBS, portrait_png, short_speech)
    record = run_batch(proxy.url, pairs, tmp_path / "out", parallel=4)
    names = [f"job{number:02d}" for number in range(LOAD_JOBS)]
    assert record.outcome.done == names and not record.outcome.failed, record.outcome.failed
    summary = assert_each_job_once(tmp_path / "out", names)
    # The job header is hashed: both workers took jobs, and every job's requests stayed on one worker (the
    # download found the prompt's outputs where /prompt queued it, which it would not on the other worker).
    assert {lines[0]["worker"] for lines in summary.done.values()} == set(workers)
    assert summary.failed == {}
    latencies = record.latencies()
    assert len(latencies) == LOAD_JOBS and percentile(latencies, 0.5) <= percentile(latencies, 0.95)


def test_a_worker_killed_mid_batch_loses_no_job_and_is_marked_down(
    fleet: tuple[dict[str, ComfyServer], HAProxy], portrait_png: Path, short_speech: Path, tmp_path: Path
) -> None:
    """Runs last in this module: the killed worker stays dead."""
    workers, proxy = fleet
    jobs = 8
    pairs = make_pairs(tmp_path / "pairs", jobs, portrait_png, short_speech)
    record = run_batch(proxy.url, pairs, tmp_path / "out", parallel=2, proxy=proxy, workers=workers,
                       kill_after_done=2)
    assert record.killed in workers, "no job was queued after two finished: nothing was killed"
    names = [f"job{number:02d}" for number in range(jobs)]
    assert record.outcome.done == names and not record.outcome.failed, record.outcome.failed
    summary = assert_each_job_once(tmp_path / "out", names)

    # The job that was on the killed worker failed there (retryable) and finished once on the other one.
    moved = [name for name, lines in summary.failed.items() if any(x["worker"] == record.killed for x in lines)]
    assert moved, summary.failed
    for name in moved:
        assert summary.done[name][0]["worker"] != record.killed and summary.done[name][0]["attempt"] >= 2
    assert all(line["retryable"] for lines in summary.failed.values() for line in lines)

    # HAProxy took it out of rotation within its check interval, and says why in its log.
    assert record.down_after_s is not None, proxy.log()
    assert record.down_after_s <= DOWN_WITHIN_S, (record.down_after_s, proxy.log())
    assert proxy.server_states()[record.killed].startswith("DOWN")
    assert f"{record.killed} is DOWN" in proxy.log_path.read_text()
    survivor = next(name for name in workers if name != record.killed)
    assert proxy.server_states()[survivor] == "UP"
