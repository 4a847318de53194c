"""unet.pth -> unet.fp16.safetensors: the converted file holds the source's tensors in fp16 key for key, the loader
prefers it (and says so), an interrupted conversion leaves nothing the loader would take, a corrupt conversion is
refused with what to do, and a disk without room is refused before anything is written (a real small file system,
and the free-space figure injected at the function's argument)."""

from __future__ import annotations

import gc
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from comfy_host import REPO
from safetensors.torch import load_file
from test_disk_full import SmallDiskError, mount_small_disk, unmount_small_disk

from sonic_guard.errors import CheckpointError
from sonic_guard.models.checkpoint_paths import UNET_FP16, ModelPaths, inspect_model_files
from sonic_guard.models.checkpoints import load_sonic_models
from sonic_guard.models.convert_unet import convert_unet, fp16_bytes


@pytest.fixture()
def model_root(tiny_models: Path, tmp_path: Path) -> Path:
    """A private copy of Sonic/ (to convert), with links to the other folders."""
    root = tmp_path / "tiny"
    root.mkdir()
    shutil.copytree(tiny_models / "Sonic", root / "Sonic")
    for name in ("RIFE", "stable-video-diffusion-img2vid-xt", "whisper-tiny"):
        (root / name).symlink_to(tiny_models / name, target_is_directory=True)
    return root


def _source(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "Sonic" / "unet.pth", weights_only=True)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "Sonic").iterdir() if "safetensors" in p.name)


def test_converted_file_holds_the_source_in_fp16_key_for_key(model_root: Path) -> None:
    result = convert_unet(model_root)
    assert not result.skipped and result.target == model_root / "Sonic" / UNET_FP16
    source, converted = _source(model_root), load_file(str(result.target))
    assert converted.keys() == source.keys() and result.tensors == len(source)
    for key, tensor in source.items():
        assert converted[key].dtype == torch.float16 and torch.equal(converted[key], tensor.half()), key
    assert result.bytes_written == result.target.stat().st_size
    assert result.target.stat().st_size < (model_root / "Sonic" / "unet.pth").stat().st_size * 0.6
    assert _leftovers(model_root) == [UNET_FP16]
    # Done once: a second run leaves the file alone unless forced.
    mtime = result.target.stat().st_mtime_ns
    assert convert_unet(model_root).skipped and result.target.stat().st_mtime_ns == mtime
    assert not convert_unet(model_root, force=True).skipped


def test_the_loader_prefers_the_conversion(model_root: Path) -> None:
    convert_unet(model_root)
    paths = ModelPaths.from_root(model_root)
    assert paths.unet == model_root / "Sonic" / UNET_FP16
    by_name = {f.name: f for f in inspect_model_files(paths).files}
    assert by_name["unet"].status == "ok" and by_name["unet"].expected_bytes is None
    half = load_sonic_models(paths, with_rife=False, dtype=torch.float16)
    assert half.config["unet_file"] == str(model_root / "Sonic" / UNET_FP16)
    source = _source(model_root)
    state = half.unet.state_dict()
    assert all(state[k].dtype == torch.float16 and torch.equal(state[k], v.half()) for k, v in source.items())
    # A float32 run gets the fp16 values, widened (the conversion's rounding is the only difference).
    full = load_sonic_models(paths, with_rife=False).unet.state_dict()
    assert all(torch.equal(full[k], v.half().float()) for k, v in source.items())


def test_an_interrupted_conversion_is_ignored_and_cleaned(model_root: Path) -> None:
    sonic = model_root / "Sonic"
    partial = sonic / (UNET_FP16 + ".partial")
    partial.write_bytes(b"half a file, as a killed conversion leaves it")
    assert ModelPaths.from_root(model_root).unet == sonic / "unet.pth"
    convert_unet(model_root)
    assert _leftovers(model_root) == [UNET_FP16]


def test_a_corrupt_conversion_is_refused_with_what_to_do(model_root: Path) -> None:
    target = convert_unet(model_root).target
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(CheckpointError) as caught:
        load_sonic_models(model_root, with_rife=False)
    message = str(caught.value)
    assert str(target) in message and "truncated or corrupt" in message
    assert f"delete {target}" in message and "convert_unet" in message and "--force" in message


def test_a_source_that_is_not_the_sonic_unet_is_refused(model_root: Path) -> None:
    source = _source(model_root)
    del source["conv_out.bias"]
    torch.save(source, model_root / "Sonic" / "unet.pth")
    with pytest.raises(CheckpointError, match="1 missing key"):
        convert_unet(model_root)
    assert _leftovers(model_root) == []


def test_weights_beyond_fp16_range_are_refused(model_root: Path) -> None:
    source = _source(model_root)
    source["conv_out.bias"][0] = 1e6
    torch.save(source, model_root / "Sonic" / "unet.pth")
    with pytest.raises(CheckpointError, match="beyond fp16's range"):
        convert_unet(model_root)
    assert _leftovers(model_root) == []


def test_too_little_free_space_is_refused_before_writing(model_root: Path) -> None:
    needed = fp16_bytes(_source(model_root))
    with pytest.raises(CheckpointError) as caught:
        convert_unet(model_root, free_bytes=needed // 2)
    assert "not enough free space" in str(caught.value) and "Fix:" in str(caught.value)
    assert _leftovers(model_root) == []


@pytest.fixture()
def small_disk_root(model_root: Path, tmp_path: Path) -> Iterator[Path]:
    """The model folder on a real file system with room for unet.pth and only part of its conversion."""
    pth = (model_root / "Sonic" / "unet.pth").stat().st_size
    target = tmp_path / "small"
    try:
        mount_small_disk(target, size_bytes=pth + fp16_bytes(_source(model_root)) // 2 + 2**20)
    except SmallDiskError as error:
        pytest.fail(str(error))  # not a skip: the disk-space handling would go untested
    try:
        shutil.copytree(model_root / "Sonic", target / "Sonic")
        svd = "stable-video-diffusion-img2vid-xt"  # its unet/config.json sizes the tiny UNet
        (target / svd).symlink_to(model_root / svd, target_is_directory=True)
        yield target
    finally:
        gc.collect()  # the memory-mapped unet.pth of a refused conversion lives until its traceback is collected
        unmount_small_disk(target)


def test_a_small_disk_is_refused_and_a_full_one_leaves_nothing(small_disk_root: Path) -> None:
    with pytest.raises(CheckpointError, match="not enough free space"):
        convert_unet(small_disk_root)
    assert _leftovers(small_disk_root) == []
    # With the free-space check told there is room, the write itself runs out of space (ENOSPC).
    with pytest.raises(CheckpointError, match="filled up") as caught:
        convert_unet(small_disk_root, free_bytes=1 << 40)
    assert "partial file was removed" in str(caught.value)
    del caught
    assert _leftovers(small_disk_root) == []


def test_the_command_line(model_root: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sonic_guard.models.convert_unet", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300)

    done = run(str(model_root))
    assert done.returncode == 0 and "wrote" in done.stdout and UNET_FP16 in done.stdout, done.stderr
    assert "already exists" in run(str(model_root)).stdout
    missing = run(str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "unet.pth" in missing.stderr and "LeonJoe13/Sonic" in missing.stderr
