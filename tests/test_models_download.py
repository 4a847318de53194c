"""The model download with the real huggingface_hub client against a loopback server in the hub's URL layout.

Nothing is mocked: the fake hub (tests/hub_server.py) speaks HTTP the way huggingface.co does (listing, resolve with
X-Repo-Commit/ETag/X-Linked-Size, a 302 to a CDN origin, Range), and its faults are real dropped connections.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import DROP_AT, HubServer, check_download_resume, fake_repos, partial_files
from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

from sonic_guard.models.download import (
    PARTIAL_FOLDER,
    DownloadError,
    DownloadProgress,
    download,
    missing_parts,
    model_folder_name,
    parse_parts,
)

REPO = Path(__file__).resolve().parents[1]
FILES = fake_repos()
BY_PATH = {(f.repo_id, f.path): f for f in FILES}
SVD = "stabilityai/stable-video-diffusion-img2vid-xt"
# The official layout (README "Models") for the default parts: repo file -> place in the model folder.
EXPECTED_LAYOUT = {
    "Sonic/unet.pth": ("LeonJoe13/Sonic", "Sonic/unet.pth"),
    "Sonic/audio2token.pth": ("LeonJoe13/Sonic", "Sonic/audio2token.pth"),
    "Sonic/audio2bucket.pth": ("LeonJoe13/Sonic", "Sonic/audio2bucket.pth"),
    "RIFE/flownet.pkl": ("LeonJoe13/Sonic", "RIFE/flownet.pkl"),
    "whisper-tiny/config.json": ("openai/whisper-tiny", "config.json"),
    "whisper-tiny/preprocessor_config.json": ("openai/whisper-tiny", "preprocessor_config.json"),
    "whisper-tiny/model.safetensors": ("openai/whisper-tiny", "model.safetensors"),
    **{f"stable-video-diffusion-img2vid-xt/{p}": (SVD, p) for p in (
        "unet/config.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "image_encoder/config.json",
        "image_encoder/model.fp16.safetensors",  # the only image encoder weights this repo has
        "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json")},
}


@pytest.fixture
def hub():
    with HubServer(FILES) as server:
        yield server


def tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def assert_official_layout(dest: Path) -> None:
    assert tree(dest) == set(EXPECTED_LAYOUT)
    for target, key in EXPECTED_LAYOUT.items():
        assert (dest / target).read_bytes() == BY_PATH[key].data, target


def test_full_download_gives_the_official_layout_byte_for_byte(hub: HubServer, tmp_path: Path) -> None:
    seen: list[DownloadProgress] = []
    dest = tmp_path / "sonic"
    plan = download(dest, endpoint=hub.url, progress=seen.append)
    assert_official_layout(dest)  # no yoloface (TorchScript), no SVD UNet weights, no fp16 twin, no .bin twin
    assert not (dest / PARTIAL_FOLDER).exists()
    assert plan.total_bytes == sum(BY_PATH[k].data.__len__() for k in EXPECTED_LAYOUT.values())
    done = [p.done_bytes for p in seen if p.state == "downloading"]
    assert done == sorted(done) and done[-1] <= plan.total_bytes
    assert seen[0].state == "planning" and seen[-1].state == "done" and seen[-1].fraction == 1.0
    assert seen[-1].files_done == seen[-1].files_total == len(EXPECTED_LAYOUT)
    # A second run finds everything in place: it only lists the repos, fetches nothing.
    before = len(hub.requests)
    again = download(dest, ["sonic", "whisper", "svd"], endpoint=hub.url)
    assert again.files == () and len(again.present) == len(EXPECTED_LAYOUT)
    assert {r.path.split("/")[1] for r in hub.requests[before:]} == {"api"}


def test_face_detector_only_when_asked_for(hub: HubServer, tmp_path: Path) -> None:
    download(tmp_path, ["yolo"], endpoint=hub.url)
    assert tree(tmp_path) == {"yoloface_v5m.pt"}
    assert (tmp_path / "yoloface_v5m.pt").read_bytes() == BY_PATH[("LeonJoe13/Sonic", "yoloface_v5m.pt")].data
    assert "yolo" not in parse_parts(None) and missing_parts(tmp_path) == ["sonic", "whisper", "svd"]


def test_dropped_connection_resumes_with_a_range_request(hub: HubServer, tmp_path: Path) -> None:
    """The transfer is cut at DROP_AT; the client keeps what it wrote (whole 10 MiB chunks) and asks for the rest."""
    hub.drop_after("Sonic/unet.pth", DROP_AT)
    download(tmp_path, ["sonic"], endpoint=hub.url)
    starts = [r.range_start for r in hub.gets_of("Sonic/unet.pth")]
    assert starts == [0, DROP_AT // DOWNLOAD_CHUNK_SIZE * DOWNLOAD_CHUNK_SIZE]
    assert starts[1] > 0
    unet = BY_PATH[("LeonJoe13/Sonic", "Sonic/unet.pth")]
    assert (tmp_path / "Sonic" / "unet.pth").read_bytes() == unet.data


def test_interrupted_download_continues_in_the_next_run(hub: HubServer, tmp_path: Path) -> None:
    hub.drop_after("Sonic/unet.pth", DROP_AT, then_down=True)
    with pytest.raises(DownloadError) as failed:
        download(tmp_path, ["sonic"], endpoint=hub.url)
    kept = sum(p.stat().st_size for p in partial_files(tmp_path))
    message = str(failed.value)
    assert kept > 0 and f"stopped at byte {kept} of" in message and "503" in message and "hf download" in message
    assert tree(tmp_path) == {p.relative_to(tmp_path).as_posix() for p in partial_files(tmp_path)}  # no partial in
    hub.outage(False)                                                                    # the layout itself
    first = len(hub.gets_of("Sonic/unet.pth"))
    download(tmp_path, ["sonic"], endpoint=hub.url)
    assert [r.range_start for r in hub.gets_of("Sonic/unet.pth")[first:]] == [kept]
    unet = BY_PATH[("LeonJoe13/Sonic", "Sonic/unet.pth")]
    assert (tmp_path / "Sonic" / "unet.pth").read_bytes() == unet.data
    assert not (tmp_path / PARTIAL_FOLDER).exists()


def test_a_partial_file_of_an_older_version_is_discarded(hub: HubServer, tmp_path: Path) -> None:
    stale = tmp_path / PARTIAL_FOLDER / "Sonic" / "unet.pth.0000older0000.incomplete"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"not this version")
    download(tmp_path, ["sonic"], endpoint=hub.url)
    assert [r.range_start for r in hub.gets_of("Sonic/unet.pth")] == [0]
    assert not (tmp_path / PARTIAL_FOLDER).exists()


def test_check_download_resume_for_the_bench() -> None:
    assert check_download_resume() is True


def test_offline_mode_refuses_clearly_and_leaves_nothing(hub: HubServer, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dest = tmp_path / "sonic"
    with pytest.raises(DownloadError) as refused:
        download(dest, endpoint=hub.url)
    message = str(refused.value)
    assert "HF_HUB_OFFLINE" in message and "hf download LeonJoe13/Sonic Sonic/unet.pth" in message
    assert not dest.exists() and hub.requests == []


def test_unreachable_endpoint_names_it_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)  # read when called, not at import
    dest = tmp_path / "sonic"
    with pytest.raises(DownloadError) as failed:
        download(dest, ["sonic", "whisper"])
    message = str(failed.value)
    assert f"{endpoint}/api/models/LeonJoe13/Sonic" in message and "ConnectError" in message
    assert "set HF_ENDPOINT" in message and "hf download openai/whisper-tiny" in message
    assert not dest.exists()


def test_too_little_disk_space_is_refused_before_any_byte(hub: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "sonic"
    needed = sum(len(BY_PATH[k].data) for k in EXPECTED_LAYOUT.values())
    with pytest.raises(DownloadError) as refused:
        download(dest, endpoint=hub.url, free_bytes=needed - 1)
    assert "not enough free disk space" in str(refused.value) and "nothing was downloaded" in str(refused.value)
    assert not dest.exists()
    assert all(r.path.startswith("/api/models/") for r in hub.requests)  # listings only, no file request
    download(dest, endpoint=hub.url, free_bytes=needed)  # exactly enough is enough
    assert_official_layout(dest)


def test_a_file_shorter_than_the_hub_says_is_not_placed(hub: HubServer, tmp_path: Path) -> None:
    hub.serve_short("RIFE/flownet.pkl", 1000)
    with pytest.raises(DownloadError) as failed:
        download(tmp_path, ["sonic"], endpoint=hub.url)
    assert "20000" in str(failed.value) and "flownet.pkl" in str(failed.value)
    assert not (tmp_path / "RIFE" / "flownet.pkl").exists()
    assert (tmp_path / "Sonic" / "unet.pth").is_file()  # the files before it are whole and stay


@pytest.mark.parametrize("what", ["sonic,face", "", "yolo,nonsense"])
def test_unknown_parts_are_named(what: str) -> None:
    with pytest.raises(DownloadError, match="sonic', 'whisper', 'svd', 'yolo'"):
        parse_parts(what)


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", None, 7, "x" * 65])
def test_model_folder_names_are_plain(name: object) -> None:
    with pytest.raises(DownloadError, match="not a plain folder name"):
        model_folder_name(name)


def test_command_line_prints_progress_and_the_result(hub: HubServer, tmp_path: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "sonic_guard.models.download", "--dest", str(tmp_path / "w"),
                          "--what", "whisper"], capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "whisper-tiny/model.safetensors" in run.stdout and "done: 3 files" in run.stdout
    assert tree(tmp_path / "w") == {"whisper-tiny/config.json", "whisper-tiny/preprocessor_config.json",
                                    "whisper-tiny/model.safetensors"}
    bad = subprocess.run([sys.executable, "-m", "sonic_guard.models.download", "--dest", str(tmp_path / "w"),
                          "--what", "weights"], capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert bad.returncode == 1 and "unknown model part" in bad.stderr
