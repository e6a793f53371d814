"""index --resize squash|pad|center-crop: the geometry, its inverse, and that the fill of a padded image is never
scored (image scores, pixel metrics), end to end through index, score and predict."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from stages.method.anomaly_map import image_score
from stages.store.cache import RunStore
from stages.data.geometry import fit, layout, to_original, valid
from stages.method.metrics import compute_metrics

from conftest import TINY_EXTRACT, TINY_INDEX, TINY_TRAIN


@pytest.mark.parametrize("w,h", [(100, 50), (50, 100), (64, 64), (33, 97)])
def test_layouts_keep_the_aspect(w, h):
    for mode in ("pad", "center-crop"):
        lay = layout(w, h, 32, mode)
        assert abs(lay.sw / lay.sh - w / h) < 0.1 * w / h
        assert (max(lay.sw, lay.sh) == 32) if mode == "pad" else (min(lay.sw, lay.sh) == 32)
    x0, y0, x1, y1 = layout(w, h, 32, "pad").box
    assert valid(w, h, 32, "pad").sum() == (x1 - x0) * (y1 - y0) and valid(w, h, 32, "squash").all()


def test_fit_pads_with_the_edge_and_masks_with_zero():
    img = Image.fromarray(np.full((50, 100, 3), 200, np.uint8))  # 100 wide, 50 high
    a = fit(img, 32, "pad", Image.Resampling.BILINEAR)
    assert a.shape == (32, 32, 3) and (a == 200).all()  # edge fill of a flat image is the image's value
    m = fit(Image.fromarray(np.full((50, 100), 255, np.uint8)), 32, "pad", Image.Resampling.NEAREST, fill="zero")
    assert (m > 0).sum() == valid(100, 50, 32, "pad").sum() and not m[~valid(100, 50, 32, "pad")].any()
    c = fit(img, 32, "center-crop", Image.Resampling.BILINEAR)
    assert c.shape == (32, 32, 3)


@pytest.mark.parametrize("mode", ["squash", "pad", "center-crop"])
def test_to_original_inverts_the_layout(mode):
    """A map that reads its own frame column goes back to a map increasing along the original's x; a constant
    map stays constant (NaN only where a crop never looked)."""
    w, h = 100, 50
    x = np.tile(np.arange(32, dtype=np.float32), (32, 1))
    back = to_original(x, w, h, mode)
    assert back.shape == (h, w)
    row = back[h // 2]
    seen = ~np.isnan(row)
    assert seen.sum() >= w // 3 and (np.diff(row[seen]) >= -1e-4).all()
    const = to_original(np.full((32, 32), 7.0, np.float32), w, h, mode)
    assert np.allclose(const[~np.isnan(const)], 7.0)
    assert np.isnan(const).any() == (mode == "center-crop")


def test_the_fill_never_decides_an_image_score():
    maps = torch.rand(2, 32, 32)
    v = torch.from_numpy(np.stack([valid(100, 50, 32, "pad")] * 2))
    hot = maps.clone()
    hot[~v] = 100.0  # the fill lights up: an aspect cue
    assert torch.allclose(image_score(hot, 8, v), image_score(maps, 8, v))
    assert (image_score(hot, 8) > 50).all()  # without valid it would decide


def test_pixel_metrics_count_only_the_image():
    rng = np.random.default_rng(0)
    v = np.stack([valid(100, 50, 32, "pad")] * 4)
    masks = (rng.random((4, 32, 32)) < 0.1) & v
    maps = (rng.random((4, 32, 32)) + 0.5 * masks).astype(np.float32)
    maps[~v] = -5.0  # the fill: the easiest negatives there are, if they were counted
    out = compute_metrics(np.array([0, 1, 0, 1]), rng.random(4), masks, maps, valid=v)
    assert out["p_auroc"] == pytest.approx(roc_auc_score(masks[v], maps[v]), abs=1e-9)
    assert compute_metrics(np.array([0, 1, 0, 1]), rng.random(4), masks, maps)["p_auroc"] > out["p_auroc"]


def _wide(tiny_data: Path, dst: Path) -> Path:
    """The tiny dataset with every test image (and mask) stretched to 96 x 64, as MTD's odd crops."""
    shutil.copytree(tiny_data / "disc", dst / "disc")
    for p in (dst / "disc").rglob("*.png"):
        if "test" in p.parts or "ground_truth" in p.parts:
            im = Image.open(p)
            im.resize((96, 64), Image.Resampling.NEAREST if "ground_truth" in p.parts else Image.Resampling.BILINEAR
                      ).save(p)
    return dst


def test_pad_end_to_end(tiny_data, tmp_path, cli):
    data = _wide(tiny_data, tmp_path / "data")
    run = tmp_path / "r.zarr"
    for args in (["index", "--data", data, *TINY_INDEX, "--resize", "pad"], ["extract", *TINY_EXTRACT],
                 ["train-base", *TINY_TRAIN], ["infer-base"], ["score"]):
        cli(args[0], "--run", run, *args[1:], "-q")
    store = RunStore(run)
    index = store.current("index")
    assert index.params["resize"] == "pad"
    records = index.attrs["records"]
    content = index.array("valid")[:].astype(bool)
    masks = index.array("masks")[:].astype(bool)
    test = [i for i, r in enumerate(records) if r["split"] == "test"]
    assert all(content[i].sum() == 64 * 43 or content[i].sum() == 64 * 42 for i in test)  # 96x64 -> 64x43
    assert not (masks & ~content).any(), "a defect pixel in the fill"
    painted = [i for i, r in enumerate(records) if "synthetic" in r]
    assert painted and all(masks[i].any() for i in painted), "a synthetic defect with no pixel on the image"
    # report --plots' pixel ROC counts the image's pixels only, as the stored P-AUROC does
    from sklearn.metrics import auc

    from stages.apps import plots

    entry = store.current("score")
    for cat in index.attrs["masked_categories"]:
        c = plots.load(store, entry, "base", cat)
        assert c.valid is not None and not c.valid.all()
        fpr, tpr = plots.pixel_roc(c.masks, c.maps, valid=c.valid)
        assert auc(fpr, tpr) == pytest.approx(entry.attrs["metrics"][cat]["p_auroc"], abs=1e-6)
    # the same data squashed makes another index key, and the squash key holds no "resize" param
    cli("index", "--run", tmp_path / "s.zarr", "--data", data, *TINY_INDEX, "-q")
    assert "resize" not in RunStore(tmp_path / "s.zarr").current("index").params
    # predict draws the file's own aspect: 96 x 64 shown at 64 x 43
    from stages.apps.predict.loop import predict
    from stages.apps.predict.predictor import Predictor

    image = sorted((data / "disc" / "test").rglob("*.png"))[-1]
    views = []  # pictures are drawn per batch: the arrays are dropped after it
    predict(Predictor(store, "cpu", base_only=True), [image], None, progress=False,
            on_batch=lambda batch: views.extend(p.shown() for p in batch))
    (shown,) = views
    assert shown["h_out"].shape == (43, 64) and shown["image"].shape == (43, 64, 3)
    # calibrated on padded normals, masks at the file's own size on request
    cli("calibrate", "--run", run, "--base-only", "--pixel", "-q")
    cli("predict", image, "--run", run, "--base-only", "--out", tmp_path / "p", "--full-size-masks", "-q")
    (mask,) = (tmp_path / "p" / "pictures").rglob("*_mask.png")
    assert Image.open(mask).size == (96, 64)
