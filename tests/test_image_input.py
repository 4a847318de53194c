"""Portrait files from disk: real photos decode, and every broken file gets an actionable BadImageError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from sonic_guard.errors import BadImageError
from sonic_guard.inputs.image_loading import load_image_file


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_real_photo_and_transparent_png_decode(tmp_path: Path) -> None:
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(data.astronaut()).save(photo, quality=95)
    array, _ = load_image_file(photo)
    assert array.shape == (512, 512, 3) and array.dtype == np.uint8
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)  # fully transparent black: becomes white
    (tmp_path / "clear.png").write_bytes(_png_bytes(rgba))
    array, notes = load_image_file(tmp_path / "clear.png")
    assert array.shape == (8, 8, 3) and int(array.min()) == 255 and notes


def test_animated_gif_uses_the_first_frame(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)) for value in (10, 200)]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:])
    array, notes = load_image_file(tmp_path / "moving.gif")
    assert array.shape == (16, 16, 3) and any("2 frames" in note for note in notes)


@pytest.mark.parametrize(("name", "content", "words"), [
    ("empty.png", b"", "empty (0 bytes)"),
    ("text.png", b"this is not a picture at all\n" * 20, "not an image"),
    ("cut.png", _png_bytes(data.astronaut())[:5000], "damaged"),
    ("noise.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "not an image"),
])
def test_broken_files_are_refused_with_what_why_and_fix(tmp_path: Path, name: str, content: bytes,
                                                        words: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BadImageError) as caught:
        load_image_file(path)
    message = str(caught.value)
    assert words in message and name in message and "Expected:" in message and "Fix:" in message


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match="does not exist"):
        load_image_file(tmp_path / "nowhere.png")
