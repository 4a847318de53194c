"""Whisper-tiny found where users keep it: beside the Sonic files, in ComfyUI's audio encoders folders, or in the
Hugging Face cache (a real cache layout, checked by huggingface_hub's own scanner); when it is nowhere the error
names every place looked and the download command."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from comfy_host import REPO
from huggingface_hub import scan_cache_dir

from sonic_guard.errors import CheckpointError
from sonic_guard.models.checkpoint_paths import WHISPER_REPO, ModelPaths, find_whisper
from sonic_guard.models.checkpoints import load_sonic_models

COMMIT = "169d4a4341b33bc18d8881c4b69c2e104e1cc0af"  # any 40-hex revision: the cache names snapshots by commit


def write_hf_cache_repo(cache: Path, source: Path, names: list[str] | None = None, commit: str = COMMIT) -> Path:
    """Lay `source`'s files out as huggingface_hub caches a model repo: blobs named by hash, a snapshot folder of
    relative links to them, and refs/main naming the snapshot's commit. Returns the snapshot folder."""
    repo = cache / ("models--" + WHISPER_REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted(source.iterdir()) if names is None else [source / n for n in names]:
        blob = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, repo / "blobs" / blob)
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture()
def sonic_only(tiny_models: Path, tmp_path: Path) -> Path:
    """A model folder with everything but whisper-tiny."""
    root = tmp_path / "sonic-root"
    root.mkdir()
    for name in ("Sonic", "RIFE", "stable-video-diffusion-img2vid-xt"):
        (root / name).symlink_to(tiny_models / name, target_is_directory=True)
    return root


def _whisper_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k.removeprefix("encoder."): v for k, v in load_file(str(folder / "model.safetensors")).items()
            if k.startswith("encoder.")}


def _assert_loaded_from(models, folder: Path) -> None:
    expected = _whisper_weights(folder)
    state = models.whisper_encoder.state_dict()
    assert expected and all(torch.equal(state[k], v) for k, v in expected.items())
    assert models.config["whisper_folder"] == str(folder)


def test_beside_the_sonic_files_comes_first(tiny_models: Path, tmp_path: Path) -> None:
    encoders = tmp_path / "audio_encoders"
    shutil.copytree(tiny_models / "whisper-tiny", encoders / "whisper-tiny")
    search = find_whisper(tiny_models, [encoders], hf_cache=tmp_path / "empty-cache")
    assert search.folder == tiny_models / "whisper-tiny"
    assert search.looked == (f"{tiny_models / 'whisper-tiny'} (beside the Sonic files)",)


def test_audio_encoders_folder_is_used(sonic_only: Path, tiny_models: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "models" / "audio_encoders", tmp_path / "extra" / "audio_encoders"
    first.mkdir(parents=True)
    (first / "whisper_large_v3_fp16.safetensors").write_bytes(b"another encoder, not ours")
    shutil.copytree(tiny_models / "whisper-tiny", second / "openai_whisper-tiny")
    search = find_whisper(sonic_only, [first, second], hf_cache=tmp_path / "empty-cache")
    assert search.folder == second / "openai_whisper-tiny"
    assert [place.split(" (")[0] for place in search.looked] == [
        str(sonic_only / "whisper-tiny"), str(first / "whisper-tiny"), str(second / "openai_whisper-tiny")]
    models = load_sonic_models(ModelPaths.from_root(sonic_only, whisper=search), with_rife=False, whisper=search)
    _assert_loaded_from(models, second / "openai_whisper-tiny")


def test_hugging_face_cache_is_used(sonic_only: Path, tiny_models: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    snapshot = write_hf_cache_repo(cache, tiny_models / "whisper-tiny")
    # huggingface_hub itself reads the layout as a cached openai/whisper-tiny at that revision.
    scanned = {repo.repo_id: repo for repo in scan_cache_dir(cache).repos}
    assert [rev.commit_hash for rev in scanned[WHISPER_REPO].revisions] == [COMMIT]
    assert not scan_cache_dir(cache).warnings

    search = find_whisper(sonic_only, [tmp_path / "no-audio-encoders"], hf_cache=cache)
    assert search.folder == snapshot
    assert search.looked[-1] == f"{cache / 'models--openai--whisper-tiny'} (Hugging Face cache)"
    models = load_sonic_models(ModelPaths.from_root(sonic_only, whisper=search), with_rife=False, whisper=search)
    _assert_loaded_from(models, snapshot)


def test_partly_cached_repo_is_passed_over(sonic_only: Path, tiny_models: Path, tmp_path: Path) -> None:
    """A download stopped after the configs (no weights in the snapshot) is not taken for whisper-tiny."""
    cache = tmp_path / "hub"
    write_hf_cache_repo(cache, tiny_models / "whisper-tiny", names=["config.json", "preprocessor_config.json"])
    assert find_whisper(sonic_only, hf_cache=cache).folder is None


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_the_default_cache_follows_huggingface_hub_variables(variable: str, tiny_models: Path,
                                                             tmp_path: Path) -> None:
    """Without an explicit cache, huggingface_hub's own (read from its environment variables at import)."""
    cache = tmp_path / "hf-home"
    snapshot = write_hf_cache_repo(cache / "hub" if variable == "HF_HOME" else cache, tiny_models / "whisper-tiny")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | {variable: str(cache)}
    code = "from sonic_guard.models.checkpoint_paths import find_whisper; print(find_whisper(None).folder)"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == str(snapshot), done.stderr


def test_nowhere_lists_every_place_and_the_download(sonic_only: Path, tmp_path: Path) -> None:
    encoders = [tmp_path / "models" / "audio_encoders", tmp_path / "extra" / "audio_encoders"]
    encoders[1].mkdir(parents=True)
    single = encoders[1] / "whisper-tiny.safetensors"
    single.write_bytes(b"a single-file whisper is not read")
    cache = tmp_path / "hub"
    search = find_whisper(sonic_only, encoders, hf_cache=cache)
    assert search.folder is None
    with pytest.raises(CheckpointError) as caught:
        load_sonic_models(ModelPaths.from_root(sonic_only, whisper=search), whisper=search)
    message = str(caught.value)
    for place in (sonic_only / "whisper-tiny", encoders[0] / "whisper-tiny", encoders[1] / "whisper-tiny",
                  single, cache / "models--openai--whisper-tiny"):
        assert str(place) in message, place
    # huggingface_hub 2.x ships only the `hf` command: the hint must not name the removed huggingface-cli
    assert "hf download openai/whisper-tiny --local-dir" in message and "huggingface-cli" not in message
    assert "Expected:" in message and "Fix:" in message


def test_a_root_without_a_search_still_names_its_places(sonic_only: Path, tmp_path: Path) -> None:
    """load_sonic_models(root) searches by itself (beside the files, then the default cache) and says so."""
    code = ("import sys; from sonic_guard.models.checkpoints import load_sonic_models\n"
            "try:\n    load_sonic_models(sys.argv[1])\nexcept Exception as error:\n    print(error)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | {"HF_HUB_CACHE": str(tmp_path / "hub")}
    done = subprocess.run([sys.executable, "-c", code, str(sonic_only)], env=env, cwd=REPO, capture_output=True,
                          text=True, check=True, timeout=120)
    assert "CheckpointError" not in done.stderr, done.stderr
    assert str(sonic_only / "whisper-tiny") in done.stdout and str(tmp_path / "hub") in done.stdout, done.stdout
