"""`drdc bound` (the paper's Table 1): hand-computed masks, an independent PIL + sklearn oracle, a provable
monotonicity, the CLI on tiny data, and bad input."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from stages.apps import bound as bnd
from stages.errors import ConfigError


def _square(top: int, size: int = 8, side: int = 4) -> np.ndarray:
    m = np.zeros((1, size, size), np.uint8)
    m[0, top : top + side, top : top + side] = 1
    return m


def _bound(masks: np.ndarray, s: int, down: str, up: str) -> float:
    p = bnd.BoundParams(scales=(s,), image_size=32, down=down, up=up)  # image_size only validates s here
    return bnd.bound_table([bnd.CategoryMasks("c", masks)], p, progress=False)[0][bnd.column(s)]


@pytest.mark.parametrize("top, down, expected", [
    (0, "nearest-exact", 1.0),  # block-aligned: the square comes back exactly
    # 8x8, 4x4 square at rows/cols 2..5, s=4. Block centres (2, 6) keep only the top-left block, which covers
    # 4 of 16 defect pixels and 12 of 48 normal ones: TPR = FPR = 1/4, AUROC = (1 + TPR - FPR) / 2 = 0.5.
    (2, "nearest-exact", 0.5),
    # square at 1..4: centres keep block (0,0) again: TP 9/16, FP 7/48 -> (1 + 9/16 - 7/48) / 2 = 0.708333...
    (1, "nearest-exact", (1 + 9 / 16 - 7 / 48) / 2),
    # same square, legacy nearest samples block corners (0, 4): only block (1,1) is kept: TP 1/16, FP 15/48.
    (1, "nearest", (1 + 1 / 16 - 15 / 48) / 2),
])
def test_hand_computed_binary_maps(top, down, expected):
    m = _square(top)
    assert _bound(m, 4, down, "nearest") == pytest.approx(expected, abs=1e-12)


def test_bilinear_matches_an_independent_pil_and_sklearn_composition():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:32, :32]
    masks = np.stack([((yy - cy) ** 2 / ry ** 2 + (xx - cx) ** 2 / rx ** 2 <= 1) for cy, cx, ry, rx in
                      rng.uniform([6, 6, 1.5, 1.5], [26, 26, 9, 9], size=(4, 4))]).astype(np.uint8)
    masks[3] = 0  # a normal image in the category
    for s in (2, 4, 8):
        small = masks[:, s // 2 :: s, s // 2 :: s].astype(np.float32)  # the centre pixel of every s x s block
        up = np.stack([np.asarray(Image.fromarray(x, mode="F").resize((32, 32), Image.Resampling.BILINEAR))
                       for x in small])
        np.testing.assert_allclose(bnd.rescale(masks, s), up, atol=1e-6)
        assert _bound(masks, s, "nearest-exact", "bilinear") == pytest.approx(
            roc_auc_score(masks.ravel(), up.ravel()), abs=1e-9)


def test_block_mean_bound_never_rises_with_coarser_nested_scales(tiny_data):
    """With area down + nearest up every pixel scores the defect share of its block, i.e. the exact posterior
    of its block. The ROC of a posterior is the best one the partition allows, and a coarser nested partition
    allows no more, so the AUROC cannot rise from s to 2s. (The bilinear default has no such guarantee: on this
    data grain drops to 50% at 1/8 and climbs again at 1/16.)"""
    p = bnd.BoundParams(scales=(1, 2, 4, 8, 16), image_size=64, down="area", up="nearest")
    rows = bnd.bound_table(bnd.masks_from_data(tiny_data, 64, progress=False), p, progress=False)
    for r in rows:
        vals = [r[bnd.column(s)] for s in p.scales]
        assert vals[0] == 1.0 and all(a >= b - 1e-12 for a, b in zip(vals, vals[1:])), r
        assert vals[-1] < vals[0]  # and the coarsest really loses something here


def test_params_reject_bad_scales():
    for bad in [(), (0,), (3,), (5,), (-2,), (2, 2), (448,)]:
        with pytest.raises(ConfigError, match="^scales: "):
            bnd.BoundParams(scales=bad, image_size=224)
    assert bnd.BoundParams(scales=(1, 2, 7, 14, 16), image_size=224).scales[-1] == 16  # divisors of 224 are fine


def test_cli_data_and_run_agree_with_csv_json(tiny_data, full_run_pristine, cli, tmp_path):
    res = cli("bound", "--data", tiny_data, "--image-size", "64", "--scales", "1,2,8", "--csv", tmp_path / "b.csv",
              "--json", tmp_path / "b.json", "-q")
    for word in ("disc", "grain", "weave", "Mean", "1/8", "8 px"):
        assert word in res.output
    rows = list(csv.DictReader(open(tmp_path / "b.csv")))
    doc = json.loads((tmp_path / "b.json").read_text())
    assert [r["category"] for r in rows] == ["disc", "grain", "weave", "mean"] and doc["scales"] == [1, 2, 8]
    assert doc["down"] == "nearest-exact" and doc["up"] == "bilinear" and doc["image_size"] == 64
    for r, d in zip(rows, doc["rows"]):
        assert float(r["1"]) == 1.0 and float(r["1/8"]) == pytest.approx(d["1/8"], abs=1e-6) and d["1/8"] < 1
    cats = doc["rows"][:-1]
    assert doc["rows"][-1]["1/2"] == pytest.approx(np.mean([r["1/2"] for r in cats]))
    assert doc["rows"][-1]["images"] == sum(r["images"] for r in cats) == 3 * 7
    # The run's index holds the same masks at 64 px: the same numbers without touching the dataset.
    cli("bound", "--run", full_run_pristine, "--scales", "1,2,8", "--json", tmp_path / "r.json", "-q")
    again = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [{k: v for k, v in r.items()} for r in again] == doc["rows"]
    one = cli("bound", "--run", full_run_pristine, "--scales", "4", "--category", "disc", "-q").output
    assert "disc" in one and "weave" not in one


def _err(res, code: int, *words: str) -> None:
    lines = [ln for ln in res.stderr.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    assert res.exit_code == code and len(lines) == 1 and "Traceback" not in res.output, res.output
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_input(tiny_data, full_run_pristine, cli, tmp_path):
    _err(cli("bound", "--data", tmp_path / "nope", code=None), 1, "nope", "does not exist")
    (tmp_path / "empty").mkdir()
    _err(cli("bound", "--data", tmp_path / "empty", code=None), 1, "empty", "no category folders")
    for bad in ("0", "3", "2,abc", ","):
        _err(cli("bound", "--data", tiny_data, "--image-size", "64", "--scales", bad, code=None), 2, "--scales")
    _err(cli("bound", code=None), 2, "--data / --run")
    _err(cli("bound", "--data", tiny_data, "--run", full_run_pristine, code=None), 2, "--data / --run")
    _err(cli("bound", "--run", tmp_path / "none.zarr", code=None), 1, "no run store")
    _err(cli("bound", "--run", full_run_pristine, "--image-size", "224", code=None), 2, "--image-size", "64 px")
    _err(cli("bound", "--run", full_run_pristine, "--category", "cloth", code=None), 1, "cloth")
    _err(cli("bound", "--data", tiny_data, "--category", "cloth", code=None), 1, "cloth")
    _err(cli("bound", "--data", tiny_data, "--down", "cubic", code=None), 2, "--down")
    no_gt = tmp_path / "no_gt"
    shutil.copytree(tiny_data / "disc", no_gt / "disc", ignore=shutil.ignore_patterns("ground_truth"))
    _err(cli("bound", "--data", no_gt, code=None), 1, "ground_truth")
