"""The client's pure parts: workflow overrides, batch job lists, fingerprints, resume state, server choice."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from comfy_host import REPO, free_port

from sonic_guard.client import (
    BatchJob,
    BatchRunner,
    BatchState,
    ComfyClient,
    Overrides,
    WorkflowError,
    apply_overrides,
    choose,
    find_nodes,
    jobs_from_csv,
    jobs_from_folder,
    load_workflow,
    parse_set,
    rank,
)
from sonic_guard.client.batch import fingerprint
from sonic_guard.client.cli import main
from sonic_guard.client.errors import PromptRejectedError, describe_rejection
from sonic_guard.client.events import ProgressEvent
from sonic_guard.client.progress import TextProgress
from sonic_guard.client.servers import ServerSnapshot, snapshot_from_health

BASIC = REPO / "workflows" / "sonic_basic_api.json"


def test_overrides_land_on_the_right_nodes_and_leave_the_original_alone() -> None:
    workflow = load_workflow(BASIC)
    before = json.dumps(workflow, sort_keys=True)
    overrides = Overrides(image=Path("me.png"), audio=Path("me.wav"), min_resolution=128, steps=2, seed=9,
                          duration=1.5, policy="strict", preset="fast",
                          sets=(parse_set("1.model_folder=tiny-sonic"),
                                parse_set("SonicGuardGenerate.motion_scale=0.5")))
    prompt = apply_overrides(workflow, overrides, {"image": "sonic_client/me.png", "audio": "sonic_client/me.wav"})
    assert prompt["2"]["inputs"]["image"] == "sonic_client/me.png"
    assert prompt["3"]["inputs"]["audio_file"] == "sonic_client/me.wav"
    generator = prompt["4"]["inputs"]
    assert (generator["min_resolution"], generator["inference_steps"], generator["seed"]) == (128, 2, 9)
    assert (generator["duration"], generator["memory_policy"], generator["preset"]) == (1.5, "strict", "fast")
    assert generator["motion_scale"] == 0.5 and generator["sonic_model"] == ["1", 0]
    assert prompt["1"]["inputs"]["model_folder"] == "tiny-sonic"
    assert json.dumps(workflow, sort_keys=True) == before


@pytest.mark.parametrize(("text", "expected"), [
    ("4.inference_steps=10", ("4", "inference_steps", 10)),
    ("SonicGuardGenerate.crop_face=false", ("SonicGuardGenerate", "crop_face", False)),
    ("2.image=a=b.png", ("2", "image", "a=b.png")),
    ('4.filename_prefix="x/y"', ("4", "filename_prefix", "x/y")),
    ("4.sonic_model=[\"1\", 0]", ("4", "sonic_model", ["1", 0])),
])
def test_set_values_are_json_when_they_parse(text: str, expected: tuple) -> None:
    assert parse_set(text) == expected


@pytest.mark.parametrize("text", ["steps=3", "4.=3", ".x=3", "4.steps"])
def test_malformed_set_is_refused(text: str) -> None:
    with pytest.raises(WorkflowError, match="NODE.input=value"):
        parse_set(text)


def test_overrides_that_match_nothing_say_what_exists() -> None:
    workflow = load_workflow(BASIC)
    with pytest.raises(WorkflowError, match="SonicGuardLoadAudio"):
        apply_overrides(workflow, Overrides(sets=(("KSampler", "seed", 1),)))
    core = {"1": {"class_type": "EmptyImage", "inputs": {}}, "2": {"class_type": "PreviewImage", "inputs": {}}}
    with pytest.raises(WorkflowError, match="no Sonic Generate node"):
        apply_overrides(core, Overrides(steps=3))
    with pytest.raises(WorkflowError, match="exactly one"):
        apply_overrides(core, Overrides(image=Path("a.png")), {"image": "a.png"})
    two = {**workflow, "9": {"class_type": "LoadImage", "inputs": {"image": "b.png"}}}
    assert find_nodes(two, ("SonicGuardLoadImage", "LoadImage")) == ["2", "9"]
    with pytest.raises(WorkflowError, match=r"found 2 \(2, 9\)"):
        apply_overrides(two, Overrides(image=Path("a.png")), {"image": "a.png"})


def test_editor_format_and_broken_files_are_refused_with_a_fix(tmp_path: Path) -> None:
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(WorkflowError, match="Export \\(API\\)"):
        load_workflow(ui)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(WorkflowError, match="not valid JSON"):
        load_workflow(broken)
    with pytest.raises(WorkflowError, match="cannot be read"):
        load_workflow(tmp_path / "missing.json")
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"prompt": load_workflow(BASIC), "client_id": "x"}))
    assert find_nodes(load_workflow(wrapped), "SonicGuardGenerate") == ["4"]


def _pair(folder: Path, stem: str, payload: bytes = b"x") -> None:
    (folder / f"{stem}.png").write_bytes(b"png" + payload)
    (folder / f"{stem}.wav").write_bytes(b"wav" + payload)


def test_jobs_from_a_folder_pair_by_stem(tmp_path: Path) -> None:
    for stem in ("b", "a", "Face 1"):
        _pair(tmp_path, stem)
    (tmp_path / "alone.jpg").write_bytes(b"1")
    (tmp_path / "notes.txt").write_text("ignored")
    jobs = jobs_from_folder(tmp_path)
    assert [job.name for job in jobs] == ["Face_1", "a", "b"]
    assert jobs[1] == BatchJob("a", tmp_path / "a.png", tmp_path / "a.wav")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WorkflowError, match="no \\(image, audio\\) pair"):
        jobs_from_folder(empty)
    with pytest.raises(WorkflowError, match="is not a folder"):
        jobs_from_folder(tmp_path / "missing")


def test_jobs_from_csv_resolve_relative_paths_and_check_them(tmp_path: Path) -> None:
    _pair(tmp_path, "x")
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("image,audio,name\nx.png,x.wav,first\nx.png,x.wav,\n")
    jobs = jobs_from_csv(csv_file)
    assert [(job.name, job.image) for job in jobs] == [("first", tmp_path / "x.png"), ("x", tmp_path / "x.png")]
    csv_file.write_text("image,audio\nx.png,x.wav\nx.png,x.wav\n")
    with pytest.raises(WorkflowError, match="named 'x'"):
        jobs_from_csv(csv_file)
    csv_file.write_text("image,audio\nx.png,gone.wav\n")
    with pytest.raises(WorkflowError, match="gone.wav does not exist"):
        jobs_from_csv(csv_file)
    csv_file.write_text("image,audio\nx.png,\n")
    with pytest.raises(WorkflowError, match="line 2"):
        jobs_from_csv(csv_file)


def test_fingerprint_follows_file_bytes_workflow_and_overrides(tmp_path: Path) -> None:
    _pair(tmp_path, "a")
    job = jobs_from_folder(tmp_path)[0]
    workflow = load_workflow(BASIC)
    base = fingerprint(job, workflow, Overrides(steps=2).fingerprint_data())
    assert base == fingerprint(job, workflow, Overrides(steps=2).fingerprint_data())
    assert base != fingerprint(job, workflow, Overrides(steps=3).fingerprint_data())
    assert base != fingerprint(job, {**workflow, "9": {"class_type": "X"}}, Overrides(steps=2).fingerprint_data())
    (tmp_path / "a.wav").write_bytes(b"other speech")
    assert base != fingerprint(job, workflow, Overrides(steps=2).fingerprint_data())


def test_state_file_resumes_only_finished_jobs_whose_outputs_exist(tmp_path: Path) -> None:
    _pair(tmp_path, "a")
    job = jobs_from_folder(tmp_path)[0]
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "v.mp4").write_bytes(b"mp4")
    state = BatchState(out / "state.jsonl")
    state.record(job, "f1", "failed", retryable=True)
    assert not state.is_done(job, "f1")
    state.record(job, "f1", "done", outputs=state.relative([out / "a" / "v.mp4"]))
    with open(out / "state.jsonl", "a") as handle:
        handle.write('{"name": "a", "status": "do')  # a line cut short by a crash
    reloaded = BatchState(out / "state.jsonl")
    assert reloaded.is_done(job, "f1")
    assert not reloaded.is_done(job, "f2")
    (out / "a" / "v.mp4").unlink()
    assert not reloaded.is_done(job, "f1")


def _snapshot(url: str, free: int | None, queue: int) -> ServerSnapshot:
    return ServerSnapshot(ComfyClient(url), free, queue, "ok")


def test_server_choice_prefers_free_gpu_memory_then_short_queues() -> None:
    cpu_busy, cpu_idle = _snapshot("cpu-busy:1", None, 3), _snapshot("cpu-idle:1", None, 0)
    small, large = _snapshot("gpu-small:1", 2 << 30, 0), _snapshot("gpu-large:1", 20 << 30, 5)
    assert [s.url for s in rank([cpu_busy, small, cpu_idle, large])] == [
        "http://gpu-large:1", "http://gpu-small:1", "http://cpu-idle:1", "http://cpu-busy:1"]
    assert choose([cpu_busy, cpu_idle]).url == "http://cpu-idle:1"
    assert choose([cpu_idle, _snapshot("cpu-idle:2", None, 0)]).url == "http://cpu-idle:1"
    assert choose([large, small], avoid=["http://gpu-large:1"]).url == "http://gpu-small:1"
    assert choose([large], avoid=["http://gpu-large:1"]).url == "http://gpu-large:1"
    assert choose([]) is None
    # Parallel jobs: a server already running more of this client's jobs comes after the others.
    assert choose([large, small], busy={"http://gpu-large:1": 1}).url == "http://gpu-small:1"
    assert choose([large, small], busy={"http://gpu-large:1": 1, "http://gpu-small:1": 1}).url == "http://gpu-large:1"


def test_health_snapshot_is_read_as_the_pack_writes_it() -> None:
    health = {"status": "degraded", "problems": ["no_gpu_readout"], "queue_length": 2,
              "gpu": {"free_bytes": None, "source": None, "reason": "no NVIDIA driver", "devices": []}}
    snap = snapshot_from_health(ComfyClient("127.0.0.1:8188"), health)
    assert (snap.url, snap.free_bytes, snap.queue_length, snap.status) == ("http://127.0.0.1:8188", None, 2, "degraded")
    gpu = snapshot_from_health(ComfyClient("h:1"), {"status": "ok", "queue_length": 0, "gpu": {"free_bytes": 7}})
    assert gpu.free_bytes == 7


def test_rejection_text_names_each_node_error() -> None:
    answer = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                  "details": ""},
        "node_errors": {"4": {"class_type": "SonicGuardGenerate", "dependent_outputs": ["4"], "errors": [
            {"type": "value_bigger_than_max", "message": "Value 1000 bigger than max of 100",
             "details": "inference_steps", "extra_info": {}}]}},
    }
    text = describe_rejection(answer)
    assert "Prompt outputs failed validation" in text
    assert "node 4 (SonicGuardGenerate): [value_bigger_than_max] inference_steps" in text
    error = PromptRejectedError(400, answer)
    assert error.exit_code == 2 and "HTTP 400" in str(error)


def test_progress_bar_draws_steps_without_a_terminal() -> None:
    stream = io.StringIO()
    bar = TextProgress("job", {"4": "SonicGuardGenerate"}, stream)
    bar(None, "4")
    for step in range(1, 5):
        bar(ProgressEvent("4", step, 4), None)
    bar.finish("done")
    lines = stream.getvalue().splitlines()
    assert lines[-2].startswith("job [" + "#" * 30 + "] 4/4 node 4 (SonicGuardGenerate)")
    assert lines[-1] == "job done"
    assert "[" + "#" * 15 + "." * 15 + "] 2/4" in stream.getvalue()


def test_batch_with_no_server_waits_a_bounded_time_then_fails_retryable(tmp_path: Path) -> None:
    _pair(tmp_path, "a")
    jobs = jobs_from_folder(tmp_path)
    events: list[str] = []
    runner = BatchRunner([ComfyClient(f"127.0.0.1:{free_port()}")], load_workflow(BASIC), Overrides(),
                         tmp_path / "out", wait_for_server_s=0.5, poll_interval_s=0.1,
                         on_event=lambda kind, info: events.append(kind))
    outcome = runner.run(jobs)
    assert outcome.exit_code == 3 and list(outcome.failed) == ["a"]
    assert "waiting" in events and events[-1] == "failed"
    record = BatchState(tmp_path / "out" / "sonic_batch_state.jsonl").records["a"]
    assert record["status"] == "failed" and record["retryable"] is True


def test_cli_refuses_bad_options_with_exit_2(tmp_path: Path) -> None:
    err = io.StringIO()
    assert main(["--set", "nonsense", "--out", str(tmp_path)], stderr=err) == 2
    assert "NODE.input=value" in err.getvalue()
    err = io.StringIO()
    assert main(["--workflow", str(tmp_path / "none.json")], stderr=err) == 2
    assert "cannot be read" in err.getvalue()
