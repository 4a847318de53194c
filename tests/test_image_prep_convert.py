"""Normalising any image input to RGB uint8: alpha, grayscale, CMYK, 16-bit, float tensors, batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from sonic_guard.errors import BadImageError
from sonic_guard.inputs.image_convert import to_rgb_uint8


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return data.astronaut()[::4, ::4].copy()


def test_rgb_passes_through(photo: np.ndarray) -> None:
    for source in (photo, Image.fromarray(photo)):
        pixels, notes = to_rgb_uint8(source)
        np.testing.assert_array_equal(pixels, photo)
        assert notes == []


def test_rgba_is_composited_on_white(photo: np.ndarray) -> None:
    alpha = np.full(photo.shape[:2] + (1,), 255, np.uint8)
    alpha[:, :64] = 0
    alpha[:, 64:] = 128
    rgba = np.concatenate([photo, alpha], axis=2)
    for source in (rgba, Image.fromarray(rgba, "RGBA")):
        pixels, notes = to_rgb_uint8(source)
        assert (pixels[:, :64] == 255).all()
        half = photo[:, 64:].astype(np.float32) * (128 / 255) + 255 * (127 / 255)
        assert np.abs(pixels[:, 64:].astype(np.float32) - half).max() <= 1
        assert any("transparency" in note and "white" in note for note in notes)
    opaque, notes = to_rgb_uint8(np.concatenate([photo, np.full_like(alpha, 255)], axis=2))
    np.testing.assert_array_equal(opaque, photo)
    assert notes == []


def test_grayscale_and_la(photo: np.ndarray) -> None:
    grey = np.asarray(Image.fromarray(photo).convert("L"))
    for source in (grey, Image.fromarray(grey), grey[..., None]):
        pixels, notes = to_rgb_uint8(source)
        assert pixels.shape == photo.shape
        np.testing.assert_array_equal(pixels[..., 0], grey)
        np.testing.assert_array_equal(pixels[..., 2], grey)
        assert any("grayscale" in note for note in notes)
    la = Image.fromarray(np.stack([grey, np.zeros_like(grey)], axis=2), "LA")
    pixels, notes = to_rgb_uint8(la)
    assert (pixels == 255).all() and any("transparency" in note for note in notes)


def test_cmyk(photo: np.ndarray) -> None:
    cmyk = Image.fromarray(photo).convert("CMYK")
    pixels, notes = to_rgb_uint8(cmyk)
    assert pixels.shape == photo.shape and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - photo.astype(int)).mean() < 3
    assert any("CMYK" in note for note in notes)


def test_palette_with_transparency() -> None:
    image = Image.new("P", (80, 80), 0)
    image.putpalette([10, 200, 30] + [0, 0, 0] * 255)
    image.info["transparency"] = 0
    pixels, notes = to_rgb_uint8(image)
    assert (pixels == 255).all() and notes


def test_sixteen_bit(photo: np.ndarray) -> None:
    wide = photo.astype(np.uint16) * 257
    pixels, notes = to_rgb_uint8(wide)
    np.testing.assert_array_equal(pixels, photo)
    assert any("16-bit" in note for note in notes)
    dark = np.full((70, 70), 200, np.uint16)  # 16-bit but dark: still read as 16-bit, not as 8-bit 200
    assert to_rgb_uint8(dark)[0].max() == 1
    pil16 = Image.fromarray(photo[..., 0].astype(np.uint16) * 257)
    pixels, notes = to_rgb_uint8(pil16)
    np.testing.assert_array_equal(pixels[..., 1], photo[..., 0])


def test_float_comfy_tensors(photo: np.ndarray) -> None:
    batch = torch.from_numpy(np.stack([photo, 255 - photo])).float() / 255.0
    pixels, notes = to_rgb_uint8(batch)
    np.testing.assert_array_equal(pixels, photo)
    assert any("batch of 2" in note for note in notes)
    single, notes = to_rgb_uint8(batch[:1].half())
    assert np.abs(single.astype(int) - photo.astype(int)).max() <= 1 and notes == []
    as_255, notes = to_rgb_uint8(photo.astype(np.float64))
    np.testing.assert_array_equal(as_255, photo)
    assert any("0-255" in note for note in notes)
    channels_first, _ = to_rgb_uint8(np.moveaxis(photo, -1, 0))
    np.testing.assert_array_equal(channels_first, photo)


def test_bad_inputs(photo: np.ndarray) -> None:
    broken = photo.astype(np.float32) / 255
    broken[3, 3, 1] = np.nan
    with pytest.raises(BadImageError, match="1 NaN"):
        to_rgb_uint8(broken)
    with pytest.raises(BadImageError, match="shape"):
        to_rgb_uint8(np.zeros((10, 10, 7), np.uint8))
    with pytest.raises(BadImageError, match="shape"):
        to_rgb_uint8(torch.zeros(0, 64, 64, 3))
    with pytest.raises(BadImageError, match="str"):
        to_rgb_uint8("photo.png")
