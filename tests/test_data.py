"""Dataset discovery: MVTec-AD, BTAD, VisA and folder layouts, and every layout error named by its path."""
from __future__ import annotations

import os
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


# VisA and the plain folder layout, built from the synthetic MVTec-AD data (stages.data.synthetic): the same files
# under other names, so every record has a known source.

def _as_visa(src: Path, root: Path) -> dict[str, str]:
    """src (MVTec-AD) rewritten in VisA's layout with split_csv/1cls.csv; returns {VisA path: source path}."""
    rows, origin = ["object,split,label,image,mask"], {}
    for r in discover(src).records:
        name = f"{r.split}_{r.defect}_{Path(r.path).name}"
        image = f"{r.category}/Data/Images/{'Anomaly' if r.label else 'Normal'}/{name}"
        mask = f"{r.category}/Data/Masks/Anomaly/{Path(name).stem}.png" if r.mask else ""
        for s, d in ((r.path, image), *(((r.mask, mask),) if r.mask else ())):
            (root / d).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / s, root / d)
            origin[d] = s
        rows.append(f"{r.category},{r.split},{'anomaly' if r.label else 'normal'},{image},{mask}")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return origin


def _as_folder(src: Path, root: Path, masks: str | None = "ground_truth") -> dict[str, str]:
    """src rewritten as <category>/{good, <defect>, <masks>/<defect>}; returns {new path: source path}."""
    origin = {}
    for r in discover(src).records:
        name = f"{r.split}_{Path(r.path).name}" if r.label == 0 else Path(r.path).name
        image = f"{r.category}/{'good' if r.label == 0 else r.defect}/{name}"
        pairs = [(r.path, image)]
        if r.mask and masks:
            pairs.append((r.mask, f"{r.category}/{masks}/{r.defect}/{Path(r.mask).name}"))
        for s, d in pairs:
            (root / d).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / s, root / d)
            origin[d] = s
    return origin


def _same_as_source(ds, src_ds, origin: dict[str, str]) -> None:
    by_path = {r.path: r for r in src_ds.records}
    for r in ds.records:
        s = by_path[origin[r.path]]
        assert (r.category, r.label) == (s.category, s.label) and (r.mask is None) == (s.mask is None), r
        assert r.mask is None or origin[r.mask] == s.mask, r


def test_visa_layout_is_its_csv(tiny_data, tmp_path):
    root = tmp_path / "visa"
    origin = _as_visa(tiny_data, root)
    src = discover(tiny_data)
    for layout in ("auto", "visa"):
        ds = discover(root, layout)
        assert ds.layout == "visa" and set(ds.categories) == set(src.categories) and ds.sources == ("split_csv/1cls.csv",)
        assert [(r.split, r.label) for r in ds.records if r.category == "disc"] == sorted(
            ((r.split, r.label) for r in src.records if r.category == "disc"), key=lambda q: (q[0] != "train", q[1]))
        assert set(ds.masked_categories) == set(src.masked_categories)
        _same_as_source(ds, src, origin)
        assert {r.split for r in ds.records if r.split == "train" and r.label == 0} and all(
            (r.split == "train") <= (r.label == 0) for r in ds.records)
    assert discover(root, categories=("grain",)).categories == ("grain",)
    before = fingerprint(root, discover(root).records, ("split_csv/1cls.csv",))
    csv_path = root / "split_csv" / "1cls.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines[:1] + lines[2:] + lines[1:2]) + "\n")  # the same rows, in another order
    os.utime(csv_path, ns=(1, 1))
    assert fingerprint(root, discover(root).records, ("split_csv/1cls.csv",)) != before  # a new split: new keys


@pytest.mark.parametrize("edit,needle", [
    (lambda rows: rows[:1] + [rows[1].replace("disc,train", "disc,val")] + rows[2:], r"1cls.csv:2: split must be"),
    (lambda rows: rows[:1] + [rows[1].replace(",normal,", ",bad,")] + rows[2:], r"1cls.csv:2: label must be"),
    (lambda rows: rows[:1] + [rows[1].replace("Images/Normal/", "Images/Normal/nope_")] + rows[2:],
     r"1cls.csv:2: image .*nope_.* does not exist"),
    (lambda rows: rows + [rows[1]], r"listed twice \(also on line 2\)"),
    (lambda rows: rows[:1] + [rows[1].replace("disc/Data", "../disc/Data")] + rows[2:], r"1cls.csv:2: image path .* leaves"),
    (lambda rows: [r if ",anomaly," not in r or i != next(j for j, q in enumerate(rows) if ",anomaly," in q)
                   else r.rsplit(",", 1)[0] + ",disc/Data/Masks/Anomaly/nope.png" for i, r in enumerate(rows)],
     r"mask .*nope.png of .* does not exist"),
    (lambda rows: [r if ",anomaly," not in r or i != next(j for j, q in enumerate(rows) if ",anomaly," in q)
                   else r.rsplit(",", 1)[0] + "," for i, r in enumerate(rows)], r"has no mask, while other images"),
    (lambda rows: ["object,split,image,label,mask"] + rows[1:], r"1cls.csv:1: expected the columns"),
])
def test_visa_errors_name_the_line_and_file(tiny_data, tmp_path, edit, needle):
    root = tmp_path / "visa"
    _as_visa(tiny_data, root)
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.write_text("\n".join(edit(csv_path.read_text().splitlines())) + "\n")
    with pytest.raises(DataError, match=needle):
        discover(root)


def test_folder_layout_splits_good_images_by_a_fixed_seeded_rule(tiny_data, tmp_path):
    src = discover(tiny_data)
    for holder in ("ground_truth", "masks", None):
        root = tmp_path / f"folder-{holder}"
        origin = _as_folder(tiny_data, root, holder)
        ds = discover(root)
        assert ds.layout == "folder" and set(ds.categories) == set(src.categories)
        assert set(ds.masked_categories) == (set(src.masked_categories) if holder else set())
        if holder:
            _same_as_source(ds, src, origin)
        for cat in ds.categories:
            good = sorted((root / cat / "good").iterdir())
            test = {r.path for r in ds.records if r.category == cat and r.split == "test" and r.label == 0}
            train = {r.path for r in ds.records if r.category == cat and r.split == "train"}
            n = len(good)  # the documented rule: 20 % (at least one) to test, the rest train, nothing lost
            assert len(test) == max(1, round(0.2 * n)) and len(train) == n - len(test) and not test & train
            from stages.data.dataset import folder_split

            assert test == {p.relative_to(root).as_posix() for p in folder_split(cat, good)}
            assert folder_split(cat, list(reversed(good))) == folder_split(cat, good)  # not the listing's order
            defects = [r for r in ds.records if r.category == cat and r.label == 1]
            assert {r.defect for r in defects} == {r.defect for r in src.records if r.category == cat and r.label}
    assert discover(tmp_path / "folder-masks" / "disc").categories == ("disc",)  # a root that is one category


def test_folder_layout_errors_name_the_file(tiny_data, tmp_path):
    root = tmp_path / "f"
    _as_folder(tiny_data, root)
    gone = next((root / "disc" / "ground_truth" / "stain").iterdir())
    gone.unlink()
    with pytest.raises(DataError, match=rf"disc/stain/{gone.stem.removesuffix('_mask')}.png: defect image has no mask"):
        discover(root)
    shutil.copytree(tiny_data / "disc" / "ground_truth", root / "disc" / "masks")
    with pytest.raises(DataError, match="disc: holds both ground_truth/ and masks/"):
        discover(root)
    one = tmp_path / "one"
    _img(one / "c" / "good" / "0.png")
    _img(one / "c" / "crack" / "0.png")
    with pytest.raises(DataError, match="c/good: category 'c' needs at least 2 good images"):
        discover(one)


def test_auto_layout_is_unambiguous(tiny_data, tmp_path):
    both = tmp_path / "both"
    shutil.copytree(tiny_data / "disc", both / "disc")
    _img(both / "disc" / "good" / "0.png")  # MVTec-AD's train/good and the folder layout's good/ in one category
    with pytest.raises(DataError, match=r"disc: holds both mvtec and folder layouts' folders"):
        discover(both)
    assert discover(both, "mvtec").layout == "mvtec"  # named, it is read as that layout
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_data / "disc", mixed / "disc")
    for p in (tiny_data / "grain" / "train" / "good").iterdir():
        _img(mixed / "grain" / "good" / p.name)
    with pytest.raises(DataError, match=r"categories mix the folder and mvtec layouts"):
        discover(mixed)


def test_index_reads_visa_and_folder_layouts_as_the_same_pixels(tiny_data, tmp_path, cli):
    """End to end: each layout's index holds, for every record, the pixels and mask MVTec-AD's index holds for
    its source file."""
    from stages.store.cache import RunStore

    runs = {}
    for name, make in (("mvtec", None), ("visa", _as_visa), ("folder", _as_folder)):
        root = tiny_data if make is None else tmp_path / name
        origin = {} if make is None else make(tiny_data, root)
        run = tmp_path / f"{name}.zarr"
        cli("index", "--data", root, "--run", run, "--image-size", "64", "--val-fraction", "0", "--categories", "disc",
            *(["--layout", name] if name != "mvtec" else []))
        index = RunStore(run).current("index")
        assert index.params["layout"] == name
        runs[name] = (index, origin)
    ref, _ = runs["mvtec"]
    row = {r["path"]: i for i, r in enumerate(ref.attrs["records"])}
    for name in ("visa", "folder"):
        index, origin = runs[name]
        recs = index.attrs["records"]
        assert len(recs) == len(ref.attrs["records"])
        for i, r in enumerate(recs):
            j = row[origin[r["path"]]]
            np.testing.assert_array_equal(index.array("images")[i], ref.array("images")[j])
            np.testing.assert_array_equal(index.array("masks")[i], ref.array("masks")[j])
