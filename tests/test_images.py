"""Image and mask decoding: every PIL mode to RGB, failures named by file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.errors import DataError
from stages.data.images import load_mask, load_rgb


def _save(img: Image.Image, path: Path) -> Path:
    img.save(path)
    return path


def test_grayscale_becomes_three_equal_channels(tmp_path):
    a = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    rgb, orig = load_rgb(_save(Image.fromarray(a, "L"), tmp_path / "g.png"), 64)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8 and orig == (64, 64)
    assert np.array_equal(rgb[..., 0], a) and np.array_equal(rgb[..., 1], a) and np.array_equal(rgb[..., 2], a)


def test_rgba_drops_alpha(tmp_path):
    a = np.zeros((32, 32, 4), np.uint8)
    a[..., 0], a[..., 3] = 200, 10  # nearly transparent red: the colour is kept, not premultiplied
    rgb, _ = load_rgb(_save(Image.fromarray(a, "RGBA"), tmp_path / "a.png"), 32)
    assert (rgb[..., 0] == 200).all() and (rgb[..., 1:] == 0).all()


def test_16bit_png_scaled_not_clipped(tmp_path):
    a = np.full((32, 32), 32768, np.uint16)  # mid-grey in 16 bits
    _save(Image.fromarray(a), tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    rgb, _ = load_rgb(tmp_path / "d.png", 32)
    assert np.all(np.abs(rgb.astype(int) - 128) <= 1)  # PIL's own convert would clip to 255


def test_palette_and_cmyk(tmp_path):
    p = Image.fromarray(np.full((16, 16, 3), (10, 200, 30), np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    rgb, _ = load_rgb(_save(p, tmp_path / "p.png"), 16)
    assert tuple(rgb[0, 0]) == (10, 200, 30)
    c = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
    rgb, _ = load_rgb(_save(c, tmp_path / "c.jpg"), 16)
    assert rgb.min() > 240  # no ink = white


def test_resize_to_square(tmp_path):
    rgb, orig = load_rgb(_save(Image.new("RGB", (100, 50), (5, 6, 7)), tmp_path / "r.png"), 32)
    assert rgb.shape == (32, 32, 3) and orig == (100, 50) and tuple(rgb[10, 10]) == (5, 6, 7)


def test_truncated_png_names_the_file(tmp_path):
    p = _save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), tmp_path / "t.png")
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DataError, match="t.png"):
        load_rgb(p, 32)


def test_text_file_named_png(tmp_path):
    p = tmp_path / "fake.png"
    p.write_text("hello")
    with pytest.raises(DataError, match="fake.png: not an image"):
        load_rgb(p, 32)


def test_mask_binarised_resized_and_size_checked(tmp_path):
    m = np.zeros((40, 40), np.uint8)
    m[:20, :20] = 255
    m[30, 30] = 100  # anti-aliased grey below half range: not defect
    p = _save(Image.fromarray(m), tmp_path / "m.png")
    out = load_mask(p, (40, 40), 20)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    assert out[:10, :10].all() and not out[10:, :].any()
    with pytest.raises(DataError, match="m.png: mask is 40x40 but its image is 50x40"):
        load_mask(p, (50, 40), 20)
