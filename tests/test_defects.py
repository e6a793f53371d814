"""stages.data.defects: synthetic defects with exact masks for the label-free validation set."""
from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from stages.data.defects import HARD_KINDS, KINDS, paint_defect

S = 224
SEEDS = range(5)


def _smooth_noise(seed: int, size: int, channels: int) -> np.ndarray:
    """(size, size, channels) float, mid-grey smooth noise: a coarse random grid, bilinearly upsampled."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0, 1, (size // 16 + 2, size // 16 + 2, channels))
    t = np.arange(size) / 16
    i, f = t.astype(int), (t % 1)[:, None, None]
    rows = coarse[i] * (1 - f) + coarse[i + 1] * f
    f = (t % 1)[None, :, None]
    return rows[:, i] * (1 - f) + rows[:, i + 1] * f


def _images(size: int = S) -> dict[str, np.ndarray]:
    colour = 128 + 30 * _smooth_noise(1, size, 3) + np.random.default_rng(2).normal(0, 4, (size, size, 3))
    gray = 120 + 35 * _smooth_noise(3, size, 1)
    return {
        "uniform": np.full((size, size, 3), 128, np.uint8),
        "tinted": np.broadcast_to(np.array([150, 110, 90], np.uint8), (size, size, 3)).copy(),
        "noise": np.clip(colour, 0, 255).astype(np.uint8),
        "gray": np.repeat(np.clip(gray, 0, 255).astype(np.uint8), 3, -1),
    }


def _donor(size: int = S) -> np.ndarray:
    """A normal image of 'the same category' that differs from the test images: a high-contrast checkerboard."""
    yy, xx = np.mgrid[:size, :size]
    board = np.where((yy // 6 + xx // 6) % 2 == 0, 30, 230)
    return np.stack([board, board - 20, board + 10], -1).clip(0, 255).astype(np.uint8)


IMAGES = _images()
DONOR = _donor()


def _dilate(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask.astype(bool), 1)
    return sliding_window_view(p, (3, 3)).any(axis=(-1, -2))


def _paint(image: np.ndarray, kind: str, seed: int, donor: np.ndarray | None = DONOR):
    return paint_defect(image, kind, np.random.default_rng(seed), donor if kind == "cutpaste" else None)


@pytest.mark.parametrize("name", list(IMAGES))
@pytest.mark.parametrize("kind", KINDS)
def test_contract(kind: str, name: str) -> None:
    image = IMAGES[name].copy()
    image.flags.writeable = False  # an in-place write would raise
    donor = DONOR.copy()
    donor.flags.writeable = False
    for seed in SEEDS:
        out, mask = _paint(image, kind, seed, donor)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1} and mask.sum() > 0
        outside = ~_dilate(mask)
        assert np.array_equal(out[outside], image[outside]), "changed outside the dilated mask"
        change = np.abs(out.astype(int) - image.astype(int))[mask.astype(bool)].mean()
        assert change >= 15, f"{kind} on {name}, seed {seed}: mean |change| in mask {change:.1f}"
        if name in ("uniform", "gray"):
            assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert np.array_equal(image, IMAGES[name]) and np.array_equal(donor, DONOR)


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic(kind: str) -> None:
    image = IMAGES["noise"]
    a, b = _paint(image, kind, 7), _paint(image, kind, 7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = _paint(image, kind, 8)
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))


def test_gray_donor_into_gray_image_and_colour_donor_greyed() -> None:
    gray = IMAGES["gray"]
    for donor in (IMAGES["gray"][::-1].copy(), DONOR):
        out, _ = _paint(gray, "cutpaste", 0, donor)
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_scratch_is_thin_and_long() -> None:
    for name, image in IMAGES.items():
        for seed in range(10):
            _, mask = _paint(image, "scratch", seed)
            assert not sliding_window_view(mask, (5, 5)).all(axis=(-1, -2)).any(), "a 5x5 block: not a thin line"
            ys, xs = np.nonzero(mask)
            extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
            assert 0.08 * S <= extent <= 0.47 * S
            assert 1 <= mask.sum() / extent <= 4.5  # area per unit length ~ the width (1-3 px)


def test_spot_area() -> None:
    for seed in range(20):
        _, mask = _paint(IMAGES["noise"], "spot", seed)
        # 1 disc of radius 2 (13 px) .. 3 discs of radius 7 (149 px each)
        assert 9 <= mask.sum() <= 3 * 160


def test_perlin_area() -> None:
    for seed in range(20):
        _, mask = _paint(IMAGES["noise"], "perlin", seed)
        assert 0.005 * S * S <= mask.sum() <= 0.08 * S * S


def test_cutpaste_rectangle() -> None:
    for seed in range(20):
        _, mask = _paint(IMAGES["noise"], "cutpaste", seed)
        ys, xs = np.nonzero(mask)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert mask.sum() == h * w, "not a filled rectangle"
        assert int(0.08 * S) <= min(h, w) and max(h, w) <= int(np.ceil(0.25 * S))


@pytest.mark.parametrize("size", [32, 64, 300])
def test_other_sizes(size: int) -> None:
    images, donor = _images(size), _donor(size)
    for kind in KINDS:
        for seed in range(3):
            image = images["noise"]
            out, mask = _paint(image, kind, seed, donor)
            assert out.shape == image.shape and mask.shape == (size, size) and mask.sum() > 0
            assert np.array_equal(out[~_dilate(mask)], image[~_dilate(mask)])


def test_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="bogus"):
        paint_defect(IMAGES["noise"], "bogus", rng)
    with pytest.raises(ValueError, match="cutpaste"):
        paint_defect(IMAGES["noise"], "cutpaste", rng)
    with pytest.raises(ValueError, match="spot"):
        paint_defect(IMAGES["noise"][:16, :16], "spot", rng)


def _fine_sd(image: np.ndarray) -> float:
    """The surface's fine texture, as the hard kinds measure it: gray minus its 5 x 5 box mean."""
    from stages.data.defects import _blur

    gray = image.astype(float).mean(-1)
    return max(2.0, float((gray - _blur(gray, 2)).std()))


@pytest.mark.parametrize("name", list(IMAGES))
@pytest.mark.parametrize("kind", HARD_KINDS)
def test_hard_kinds_contract(kind: str, name: str) -> None:
    """The harder kinds: same contract as the classic ones (shape, binary non-empty mask, input untouched,
    gray stays gray, deterministic), a contrast stated in the surface's own texture (faint on a fine grain)."""
    image = IMAGES[name].copy()
    image.flags.writeable = False
    for seed in SEEDS:
        out, mask = _paint(image, kind, seed)
        assert out.shape == image.shape and out.dtype == np.uint8 and mask.shape == image.shape[:2]
        assert set(np.unique(mask)) <= {0, 1} and mask.sum() > 0
        change = np.abs(out.astype(int) - image.astype(int))
        assert change[mask.astype(bool)].mean() > 0.5, f"{kind} on {name}, seed {seed}: invisible"
        assert change.max() <= 4 * max(_fine_sd(image), 2.0) + 2 or kind == "texture", "not faint"
        if name in ("uniform", "gray"):
            assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
        if kind in ("crack", "texture") and name == "noise":  # hard-edged (a surface without grain gets a stain)
            assert np.array_equal(out[~_dilate(mask)], image[~_dilate(mask)])
        a, b = _paint(image, kind, seed), _paint(image, kind, seed)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.array_equal(image, IMAGES[name])


def test_hard_kinds_shapes() -> None:
    for seed in range(10):
        _, crack = _paint(IMAGES["noise"], "crack", seed)
        assert not sliding_window_view(crack, (5, 5)).all(axis=(-1, -2)).any(), "a crack is a thin line"
        _, stain = _paint(IMAGES["noise"], "stain", seed)
        assert 0.02 * S * S <= stain.sum() <= 0.3 * S * S  # large: an uneven region
        out, region = _paint(IMAGES["noise"], "texture", seed)
        r = region.astype(bool)
        assert np.abs(out[r].astype(float).mean(0) - IMAGES["noise"][r].astype(float).mean(0)).max() < 1.5  # same mean
        _, dent = _paint(IMAGES["noise"], "dent", seed)
        assert 5 <= dent.sum() <= 2 * np.pi * 11 ** 2


def test_index_paints_the_kinds_asked_for_and_keeps_the_classic_keys(tiny_data, tmp_path, cli) -> None:
    from stages.data.choices import ALL_KINDS
    from stages.store.cache import RunStore

    from conftest import TINY_INDEX

    cli("index", "--run", tmp_path / "a.zarr", "--data", tiny_data, *TINY_INDEX, "-q")
    cli("index", "--run", tmp_path / "b.zarr", "--data", tiny_data, *TINY_INDEX, "--val-kinds",
        "scratch,spot,perlin,cutpaste", "-q")
    cli("index", "--run", tmp_path / "c.zarr", "--data", tiny_data, *TINY_INDEX, "--val-kinds", "crack,stain", "-q")
    a, b, c = (RunStore(tmp_path / f"{n}.zarr").current("index") for n in "abc")
    # the classic kinds keep the keys runs had before; the cpu preset (a) validates on all eight
    assert "val_kinds" not in b.params and a.params["val_kinds"] == list(ALL_KINDS) and a.key != b.key
    kinds = [r["synthetic"] for r in c.attrs["records"] if r.get("synthetic")]
    assert set(kinds) == {"crack", "stain"} and kinds.count("crack") == kinds.count("stain")
    res = cli("index", "--run", tmp_path / "d.zarr", "--data", tiny_data, "--val-kinds", "crack,bogus", code=2)
    assert "--val-kinds" in res.output
