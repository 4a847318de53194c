"""Confining user file names to the input folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sonic_guard.errors import BadInputError, UnsafePathError
from sonic_guard.inputs.safe_paths import resolve_user_path


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "input"
    (folder / "audio").mkdir(parents=True)
    (folder / "speech.wav").write_bytes(b"RIFF")
    (folder / "audio" / "song.mp3").write_bytes(b"ID3")
    (tmp_path / "secret.txt").write_text("outside")
    return folder


def test_plain_nested_and_dotted_names(root: Path) -> None:
    assert resolve_user_path("speech.wav", root) == (root / "speech.wav").resolve()
    assert resolve_user_path("audio/song.mp3", root) == (root / "audio" / "song.mp3").resolve()
    # A ".." that stays inside the folder is harmless.
    assert resolve_user_path("audio/../speech.wav", root) == (root / "speech.wav").resolve()
    assert resolve_user_path(str(root / "speech.wav"), root) == (root / "speech.wav").resolve()


def test_unicode_and_long_names(root: Path) -> None:
    unicode_name = "voix_été_声音_🎤.wav"
    (root / unicode_name).write_bytes(b"x")
    assert resolve_user_path(unicode_name, root).name == unicode_name
    long_name = "a" * 240 + ".wav"
    (root / long_name).write_bytes(b"x")
    assert resolve_user_path(long_name, root).name == long_name
    with pytest.raises(BadInputError, match="not found"):
        resolve_user_path("b" * 5000 + ".wav", root)


@pytest.mark.parametrize("name", ["../secret.txt", "audio/../../secret.txt", "../../../../../etc/passwd"])
def test_dot_dot_escapes(root: Path, name: str) -> None:
    with pytest.raises(UnsafePathError, match="outside the input folder"):
        resolve_user_path(name, root)


def test_absolute_outside_and_root_itself(root: Path) -> None:
    with pytest.raises(UnsafePathError):
        resolve_user_path(str(root.parent / "secret.txt"), root)
    with pytest.raises(UnsafePathError):
        resolve_user_path("/etc/passwd", root)
    with pytest.raises(UnsafePathError):
        resolve_user_path(".", root)


def test_symlinks(root: Path) -> None:
    os.symlink(root.parent / "secret.txt", root / "innocent.wav")
    with pytest.raises(UnsafePathError):
        resolve_user_path("innocent.wav", root)
    os.symlink(root.parent, root / "escape_dir")
    with pytest.raises(UnsafePathError):
        resolve_user_path("escape_dir/secret.txt", root)
    os.symlink(root / "speech.wav", root / "alias.wav")
    assert resolve_user_path("alias.wav", root) == (root / "speech.wav").resolve()
    os.symlink(root / "loop_b", root / "loop_a")
    os.symlink(root / "loop_a", root / "loop_b")
    with pytest.raises(BadInputError):
        resolve_user_path("loop_a", root)


def test_empty_nul_and_missing(root: Path) -> None:
    for empty in ("", "   "):
        with pytest.raises(BadInputError, match="No file name"):
            resolve_user_path(empty, root)
    with pytest.raises(UnsafePathError, match="NUL"):
        resolve_user_path("speech.wav\x00.png", root)
    with pytest.raises(BadInputError, match="not found") as info:
        resolve_user_path("speach.wav", root)
    assert str(root.resolve()) in str(info.value) and "speech.wav" in str(info.value)
    assert not isinstance(info.value, UnsafePathError)
    with pytest.raises(BadInputError, match="is a folder"):
        resolve_user_path("audio", root)
    with pytest.raises(BadInputError, match="song.mp3"):
        resolve_user_path("audio/sog.mp3", root)
    with pytest.raises(BadInputError, match="does not exist"):
        resolve_user_path("speech.wav", root / "missing")
