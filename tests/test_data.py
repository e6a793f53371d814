"""Dataset discovery: MVTec-AD and BTAD layouts, and every layout error named by its path."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.data import discover, fingerprint
from stages.errors import DataError

from conftest import MTD, TINY


def _img(path: Path, size=(16, 16), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)


def test_mvtec_layout_counts_and_masks(tiny_data):
    ds = discover(tiny_data)
    assert ds.layout == "mvtec" and set(ds.categories) == set(TINY.categories)
    for cat in ds.categories:
        recs = [r for r in ds.records if r.category == cat]
        assert sum(r.split == "train" for r in recs) == TINY.n_train
        assert sum(r.split == "test" and r.label == 0 for r in recs) == TINY.n_test_good
        defects = [r for r in recs if r.label == 1]
        assert len(defects) == TINY.n_test_defect
        assert all(r.mask and r.mask.endswith("_mask.png") and (tiny_data / r.mask).is_file() for r in defects)
        assert all(r.mask is None for r in recs if r.label == 0)
    assert set(ds.masked_categories) == set(TINY.categories)


def test_category_filter_and_single_category_root(tiny_data):
    ds = discover(tiny_data, categories=("disc",))
    assert ds.categories == ("disc",)
    assert discover(tiny_data / "disc").categories == ("disc",)
    with pytest.raises(DataError, match="no category nope"):
        discover(tiny_data, categories=("nope",))


def test_btad_layout(tmp_path):
    root = tmp_path / "btad"
    for i in range(2):
        _img(root / "01" / "train" / "ok" / f"{i:03d}.bmp")
    _img(root / "01" / "test" / "ok" / "000.bmp")
    _img(root / "01" / "test" / "ko" / "000.bmp")
    _img(root / "01" / "ground_truth" / "ko" / "000.png", mode="L")
    ds = discover(root)
    assert ds.layout == "btad"
    ko = [r for r in ds.records if r.label == 1]
    assert len(ko) == 1 and ko[0].mask == "01/ground_truth/ko/000.png" and ko[0].defect == "ko"
    assert [r.defect for r in ds.records if r.split == "test" and r.label == 0] == ["good"]


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nowhere")


def test_empty_category(tmp_path):
    (tmp_path / "cat" / "train" / "good").mkdir(parents=True)
    (tmp_path / "cat" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="has no training images"):
        discover(tmp_path)


def test_wrong_layout(tmp_path):
    (tmp_path / "cat" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="no train/good"):
        discover(tmp_path)


def test_defect_without_mask(tiny_data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny_data / "disc", root / "disc")
    mask = next((root / "disc" / "ground_truth").rglob("*_mask.png"))
    mask.unlink()
    with pytest.raises(DataError, match="defect image has no mask"):
        discover(root)


def test_non_image_file_named(tiny_data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny_data / "weave", root / "weave")
    (root / "weave" / "train" / "good" / "notes.txt").write_text("x")
    (root / "weave" / "train" / "good" / ".DS_Store").write_text("x")  # hidden junk is skipped
    with pytest.raises(DataError, match="notes.txt: not an image file"):
        discover(root)


def test_category_without_ground_truth_has_no_masks(tmp_path):
    _img(tmp_path / "c" / "train" / "good" / "0.png")
    _img(tmp_path / "c" / "test" / "crack" / "0.png")
    ds = discover(tmp_path)
    assert ds.masked_categories == () and ds.records[-1].mask is None and ds.records[-1].label == 1


def test_fingerprint_changes_when_a_file_changes(tiny_data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny_data / "grain", root / "grain")
    ds = discover(root)
    before = fingerprint(ds.root, ds.records)
    assert fingerprint(ds.root, ds.records) == before
    p = root / ds.records[0].path
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(p)
    assert fingerprint(ds.root, ds.records) != before


@pytest.mark.skipif(not MTD.is_dir(), reason="shared MTD data not present")
def test_real_mtd_layout():
    ds = discover(MTD)
    recs = ds.records
    assert ds.categories == ("magnetic_tile",)
    assert sum(r.split == "train" for r in recs) == 762
    assert sum(r.split == "test" and r.label == 0 for r in recs) == 190
    assert sum(r.label == 1 for r in recs) == 392
