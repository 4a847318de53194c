"""Metrics exposition (parsed back), stage observers, failure classification and the health snapshot."""

from __future__ import annotations

import json
import threading

import prometheus_client
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from sonic_guard.errors import BadAudioError, NoFaceError
from sonic_guard.telemetry import (
    HealthThresholds,
    NullStageObserver,
    NvmlDevice,
    NvmlReading,
    Telemetry,
    classify_failure,
    health_http_status,
    run_tags,
)
from sonic_guard.telemetry.metrics import MAX_LEVERS

GIB = 1024**3


def scrape(telemetry: Telemetry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = telemetry.render_metrics()
    assert content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _gpu(index: int, free_gib: float, util: int | None = 50) -> NvmlDevice:
    return NvmlDevice(
        index,
        "NVIDIA Test",
        f"GPU-{index}",
        24 * GIB,
        int((24 - free_gib) * GIB),
        int(free_gib * GIB),
        util,
        None,
        None,
        None,
        None,
    )


def fixed_reading(*devices: NvmlDevice) -> NvmlReading:
    return NvmlReading(list(devices), "ok" if devices else "NVML found no NVIDIA GPU")


def test_run_report_becomes_metrics() -> None:
    telemetry = Telemetry()
    telemetry.record_run(
        {
            "predicted_peak_bytes": 10 * GIB,
            "measured_peak_bytes": 11 * GIB,
            "stage_seconds": {"sampling": 42.0, "decode": 3.0, "bogus_stage": 1.0},
            # The plan's "name: from→to" form, a bare name, and a mapping.
            "downgrades": ["resolution: 1024→768", "decode_chunk", {"lever": "inference_steps", "from": 25}],
            "retries": [{"lever": "decode_chunk"}, {"lever": "resolution"}],
            "levers_applied": ["cfg_batch: 3→1", "offload_idle_models: off→on"],
        }
    )
    telemetry.record_run({"outcome": "failure", "failure_reason": "no_face"})
    telemetry.record_run({"outcome": "failure", "failure_reason": "Traceback in /home/me/x.py"})
    telemetry.record_run({"outcome": "cancelled"})
    assert telemetry.last_error is not None and telemetry.last_error.reason == "other"  # cancels are not errors
    s = scrape(telemetry)
    assert value(s, "sonic_runs_total", outcome="success") == 1
    assert value(s, "sonic_runs_total", outcome="failure") == 2
    assert value(s, "sonic_runs_total", outcome="cancelled") == 1
    assert value(s, "sonic_failures_total", reason="no_face") == 1
    assert value(s, "sonic_failures_total", reason="cancelled") == 1
    assert value(s, "sonic_failures_total", reason="other") == 1  # free text never becomes a label
    assert value(s, "sonic_stage_seconds_sum", stage="sampling") == 42.0
    assert value(s, "sonic_stage_seconds_bucket", stage="sampling", le="60.0") == 1
    assert value(s, "sonic_stage_seconds_bucket", stage="sampling", le="30.0") == 0
    assert not any("bogus_stage" in str(key) for key in s)
    assert value(s, "sonic_predicted_peak_bytes") == 10 * GIB and value(s, "sonic_measured_peak_bytes") == 11 * GIB
    assert value(s, "sonic_estimator_relative_error_bucket", le="0.1") == 1  # needed 10 % more than predicted
    assert value(s, "sonic_estimator_relative_error_bucket", le="0.05") == 0
    assert value(s, "sonic_downgrades_total", lever="resolution") == 1
    assert value(s, "sonic_downgrades_total", lever="inference_steps") == 1
    assert value(s, "sonic_downgrades_total", lever="decode_chunk") == 1
    assert value(s, "sonic_oom_retries_total") == 2
    assert value(s, "sonic_levers_applied_total", lever="cfg_batch") == 1
    assert value(s, "sonic_levers_applied_total", lever="offload_idle_models") == 1
    assert all("/" not in v for key in s for _, v in key[1])


def test_lever_labels_are_checked_and_capped() -> None:
    telemetry = Telemetry()
    levers = [f"lever_{i}" for i in range(MAX_LEVERS + 8)] + ["Resolution Drop", "../etc"]
    telemetry.record_run({"downgrades": levers})
    lever_labels = {dict(key[1])["lever"] for key in scrape(telemetry) if key[0] == "sonic_downgrades_total"}
    assert len(lever_labels) == MAX_LEVERS + 1 and "other" in lever_labels


def test_run_observer_times_stages_once_and_records_the_outcome() -> None:
    telemetry = Telemetry()
    observer = telemetry.run(run_tags(duration_s=4, width=64, height=64, inference_steps=2))
    for stage in ("preprocess", "sampling", "sampling"):
        with observer.stage(stage):
            torch.ones(64, 64).sum()
    with pytest.raises(NoFaceError), observer.stage("decode"):
        raise NoFaceError(problem="no face found in the image", expected="one face", fix="use a portrait")
    report = observer.finish({"predicted_peak_bytes": 5}, error=NoFaceError("x"))
    observer.finish(report)  # a second finish does not count the run again
    assert set(report["stage_seconds"]) == {"preprocess", "sampling", "decode"}
    s = scrape(telemetry)
    assert value(s, "sonic_stage_seconds_count", stage="sampling") == 2  # observed live, not again on finish
    assert value(s, "sonic_stage_seconds_count", stage="decode") == 1
    assert value(s, "sonic_runs_total", outcome="failure") == 1
    assert value(s, "sonic_failures_total", reason="no_face") == 1
    assert telemetry.last_error is not None and telemetry.last_error.reason == "no_face"


def test_stage_names_are_a_fixed_set() -> None:
    with NullStageObserver().stage("sampling"):
        pass
    with pytest.raises(ValueError, match="unknown stage name"):
        NullStageObserver().stage("upscale")
    telemetry = Telemetry()
    with telemetry.stage("encode"):
        pass
    assert value(scrape(telemetry), "sonic_stage_seconds_count", stage="encode") == 1
    with pytest.raises(ValueError, match="unknown stage name"), telemetry.run().stage("sample"):
        pass


def test_gpu_gauges_come_from_nvml_at_scrape_time() -> None:
    devices = [_gpu(0, 20.0), _gpu(1, 4.0, util=None)]
    telemetry = Telemetry(nvml_reader=lambda: fixed_reading(*devices))
    s = scrape(telemetry)
    assert value(s, "sonic_gpu_memory_free_bytes", gpu="0") == 20 * GIB
    assert value(s, "sonic_gpu_memory_used_bytes", gpu="1") == 20 * GIB
    assert value(s, "sonic_gpu_memory_total_bytes", gpu="1") == 24 * GIB
    assert value(s, "sonic_gpu_utilization_ratio", gpu="0") == 0.5
    assert value(s, "sonic_gpu_utilization_ratio", gpu="1") is None
    assert value(s, "sonic_gpu_readout_up") == 1
    devices[0] = _gpu(0, 1.0)  # the next scrape reads again
    assert value(scrape(telemetry), "sonic_gpu_memory_free_bytes", gpu="0") == 1 * GIB


def test_gpu_gauges_on_this_machine_are_truthful() -> None:
    s = scrape(Telemetry())
    from sonic_guard.telemetry import read_nvml

    if read_nvml().devices:
        pytest.skip("this machine has an NVIDIA GPU")
    assert value(s, "sonic_gpu_readout_up") == 0
    assert not any(key[0].startswith("sonic_gpu_memory") for key in s)


def test_own_registry_not_the_global_one() -> None:
    first, second = Telemetry(), Telemetry()  # two servers in one process must not collide
    first.record_run({})
    assert value(scrape(second), "sonic_runs_total", outcome="success") == 0
    assert prometheus_client.REGISTRY.get_sample_value("sonic_runs_total", {"outcome": "success"}) is None


def test_concurrent_recording_and_scraping() -> None:
    telemetry = Telemetry()

    def work() -> None:
        for _ in range(50):
            telemetry.record_run({"stage_seconds": {"decode": 0.1}})
            telemetry.render_metrics()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    s = scrape(telemetry)
    assert value(s, "sonic_runs_total", outcome="success") == 200
    assert value(s, "sonic_stage_seconds_count", stage="decode") == 200


class InterruptProcessingException(Exception):  # the name ComfyUI's cancel exception has
    pass


def test_classify_failure() -> None:
    assert classify_failure(NoFaceError("no face")) == ("failure", "no_face")
    assert classify_failure(BadAudioError("silent")) == ("failure", "bad_audio")
    assert classify_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")) == (
        "failure",
        "oom",
    )
    assert classify_failure(InterruptProcessingException()) == ("cancelled", "cancelled")
    assert classify_failure(KeyboardInterrupt()) == ("cancelled", "cancelled")
    assert classify_failure(ValueError("boom")) == ("failure", "internal")


def test_health_snapshot_on_this_machine() -> None:
    telemetry = Telemetry()
    snapshot = telemetry.health_snapshot(queue_length=3)
    json.dumps(snapshot)
    assert snapshot["queue_length"] == 3 and snapshot["uptime_s"] >= 0 and snapshot["last_error"] is None
    assert snapshot["profiling"] == "off"
    if snapshot["gpu"]["source"] is None:  # no GPU here: null free memory with the reason, and degraded
        assert snapshot["gpu"]["free_bytes"] is None and snapshot["gpu"]["reason"]
        assert snapshot["status"] == "degraded" and snapshot["problems"] == ["no_gpu_readout"]
        assert health_http_status(snapshot) == 503
        relaxed = Telemetry(thresholds=HealthThresholds(require_gpu=False)).health_snapshot(0)
        assert relaxed["status"] == "ok" and health_http_status(relaxed) == 200


def test_health_thresholds_and_last_error() -> None:
    thresholds = HealthThresholds(min_free_gpu_bytes=8 * GIB, max_queue_length=5)
    telemetry = Telemetry(thresholds=thresholds, nvml_reader=lambda: fixed_reading(_gpu(0, 20.0), _gpu(1, 9.0)))
    snapshot = telemetry.health_snapshot(queue_length=0)
    assert snapshot["status"] == "ok" and snapshot["gpu"]["free_bytes"] == 9 * GIB
    assert [d["gpu"] for d in snapshot["gpu"]["devices"]] == [0, 1]
    telemetry.record_run({"outcome": "failure", "failure_reason": "oom"})
    snapshot = telemetry.health_snapshot(queue_length=6)
    assert snapshot["problems"] == ["queue_full", "recent_oom"]
    assert snapshot["last_error"]["reason"] == "oom" and snapshot["last_error"]["time"].endswith("+00:00")
    assert set(snapshot["last_error"]) == {"reason", "time", "age_s"}  # no message, no path
    low = Telemetry(thresholds=thresholds, nvml_reader=lambda: fixed_reading(_gpu(0, 2.0)))
    assert low.health_snapshot(0)["problems"] == ["low_gpu_memory"]


def test_recoveries_reach_metrics_and_health() -> None:
    """A run that halved its decode chunk after an OOM, evicted a model and retried once: all three are counted
    in the metrics and in /sonic/health, not only in the report."""
    telemetry = Telemetry(thresholds=HealthThresholds(require_gpu=False))
    assert telemetry.health_snapshot(0)["recoveries"] == {"oom_retries": 0, "in_place": 0, "evictions": 0,
                                                           "last": None}
    telemetry.record_run({
        "outcome": "success", "retries": [{"stage": "sampling"}],
        "levers_applied": ["cfg_batch: 3→1", "evicted: Upscaler, 3.00 GiB", "decode_chunk: 8→4 (out of memory)"],
        "adjustments": [{"kind": "evicted", "model": "Upscaler", "freed_bytes": 3 * GIB},
                        {"kind": "decode_chunk", "from": 8, "to": 4}],
    })
    registry = telemetry.registry
    assert registry.get_sample_value("sonic_oom_recovered_in_place_total", {"kind": "decode_chunk"}) == 1
    assert registry.get_sample_value("sonic_evictions_total") == 1
    assert registry.get_sample_value("sonic_evicted_bytes_total") == 3 * GIB
    assert registry.get_sample_value("sonic_oom_retries_total") == 1
    assert registry.get_sample_value("sonic_levers_applied_total", {"lever": "evicted"}) == 1
    assert registry.get_sample_value("sonic_levers_applied_total", {"lever": "decode_chunk"}) == 1
    recoveries = telemetry.health_snapshot(0)["recoveries"]
    assert (recoveries["oom_retries"], recoveries["in_place"], recoveries["evictions"]) == (1, 1, 1)
    assert recoveries["last"]["kind"] == "oom_retry" and recoveries["last"]["time"].endswith("+00:00")
