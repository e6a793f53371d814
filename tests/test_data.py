"""Dataset discovery: MVTec-AD and BTAD layouts, and every layout error named by its path."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.data.dataset import discover, fingerprint
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


# ---------------------------------------------------------------------------- mask look-up (issue 13, class 4)
def _one_defect(tmp_path, image: str, masks: list[str]):
    root = tmp_path / "d"
    for sub in ("cat/train/good", "cat/test/good", "cat/test/crack", "cat/ground_truth/crack"):
        (root / sub).mkdir(parents=True)
    px = Image.new("RGB", (8, 8))
    px.save(root / "cat/train/good/a.png")
    px.save(root / "cat/test/good/b.png")
    px.save(root / "cat/test/crack" / image, format="PNG")
    for m in masks:
        Image.new("L", (8, 8)).save(root / "cat/ground_truth/crack" / m, format="PNG")
    return root


@pytest.mark.parametrize("image, mask", [("U1.PNG", "U1_mask.PNG"), ("x.png", "x_mask.jpeg"),
                                         ("x.png", "x_mask.JPG"), ("x.bmp", "x.png")])
def test_masks_are_found_by_the_rules_of_image_look_up(tmp_path, image, mask):
    ds = discover(_one_defect(tmp_path, image, [mask]))
    (rec,) = [r for r in ds.records if r.label == 1]
    assert rec.mask == f"cat/ground_truth/crack/{mask}"


def test_two_candidate_masks_are_an_error_naming_both(tmp_path):
    with pytest.raises(DataError, match=r"more than one mask fits it: .*crack/x_mask\.png and .*crack/x\.png"):
        discover(_one_defect(tmp_path, "x.png", ["x_mask.png", "x.png"]))


def test_images_differing_only_by_extension_are_an_error_naming_both(tmp_path):
    root = _one_defect(tmp_path, "x.png", ["x_mask.png"])
    (root / "cat/test/crack/x.png").rename(root / "cat/test/crack/x.jpg")
    Image.new("RGB", (8, 8)).save(root / "cat/test/crack/x.png")
    with pytest.raises(DataError, match=r"x\.png: has the same name as .*x\.jpg"):
        discover(root)
