"""The built-in synthetic dataset: MVTec layout, exact masks, determinism, and refusing bad options."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.data import synthetic as syn
from stages.errors import ConfigError
from stages.data.synthetic import CATEGORIES, DEFECTS, SyntheticSpec, make_dataset

SMALL = SyntheticSpec(size=48, n_train=3, n_test_good=2, n_test_defect=5, seed=7)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synth") / "data", SMALL)


# ----------------------------------------------------------------------------------------- layout
def test_layout_counts_modes_and_masks(small: Path) -> None:
    assert sorted(p.name for p in small.iterdir() if p.is_dir()) == sorted(SMALL.categories)
    for cat in SMALL.categories:
        root = small / cat
        assert len(list((root / "train" / "good").glob("*.png"))) == SMALL.n_train
        assert len(list((root / "test" / "good").glob("*.png"))) == SMALL.n_test_good
        kinds = sorted(p.name for p in (root / "test").iterdir() if p.name != "good")
        assert kinds == sorted(DEFECTS[cat])  # every defect type gets >= 1 image
        assert sum(len(list((root / "test" / k).glob("*.png"))) for k in kinds) == SMALL.n_test_defect
        assert sorted(p.name for p in (root / "ground_truth").iterdir()) == kinds  # no masks for good
        want_mode = "L" if cat in syn.GRAY_CATEGORIES else "RGB"
        for img_path in root.rglob("*.png"):
            if "ground_truth" in img_path.parts:
                continue
            with Image.open(img_path) as im:
                assert im.size == (SMALL.size, SMALL.size) and im.mode == want_mode
        for kind in kinds:
            images = sorted((root / "test" / kind).glob("*.png"))
            masks = sorted((root / "ground_truth" / kind).glob("*.png"))
            assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in images]
            for m in masks:
                with Image.open(m) as im:
                    assert im.mode == "L" and im.size == (SMALL.size, SMALL.size)
                a = _load(m)
                assert set(np.unique(a).tolist()) == {0, 255}  # binary and non-empty


def test_marker_records_spec_and_completion(small: Path) -> None:
    doc = json.loads((small / syn.MARKER).read_text())
    assert doc["complete"] is True
    assert doc["spec"] == {"size": 48, "n_train": 3, "n_test_good": 2, "n_test_defect": 5,
                           "categories": list(CATEGORIES), "seed": 7}


def test_default_categories_cover_texture_object_and_gray() -> None:
    assert len(CATEGORIES) >= 3 and set(CATEGORIES) <= set(DEFECTS)
    assert all(len(DEFECTS[c]) >= 2 for c in CATEGORIES)
    assert {k for c in CATEGORIES for k in DEFECTS[c]} >= {"scratch", "hole", "stain", "missing"}
    assert syn.GRAY_CATEGORIES & set(CATEGORIES)
    # object: plain background in the corners, the part in the middle; texture: no plain background
    disc = syn.render_sample("disc", 64, 0, "train/good", 0)[0].astype(float)
    corners = np.concatenate([disc[:6, :6].reshape(-1, 3), disc[-6:, -6:].reshape(-1, 3)])
    assert corners.std() < 5 and abs(disc[20:44, 10:20].mean() - corners.mean()) > 40
    weave = syn.render_sample("weave", 64, 0, "train/good", 0)[0].astype(float)
    assert weave[:6, :6].std() > 20
    # texture is stationary: the halves look alike
    assert abs(weave[:, :32].mean() - weave[:, 32:].mean()) < 10


def test_object_pose_jitter_is_small_but_present() -> None:
    centroids = []
    for i in range(6):
        img = syn.render_sample("disc", 64, 0, "train/good", i)[0].mean(axis=2)
        ys, xs = np.nonzero(img > 90)
        centroids.append((ys.mean(), xs.mean()))
    c = np.array(centroids)
    assert np.ptp(c, axis=0).max() > 0.05  # it moves ...
    assert np.abs(c - 31.5).max() < 3  # ... but stays centred


# ------------------------------------------------------------------------------------ determinism
def test_same_spec_gives_identical_bytes(tmp_path: Path, small: Path) -> None:
    again = make_dataset(tmp_path / "again", SMALL)
    assert _files(again) == _files(small)


def test_split_counts_do_not_change_other_images(tmp_path: Path, small: Path) -> None:
    more = make_dataset(tmp_path / "more", SyntheticSpec(size=48, n_train=5, n_test_good=2, n_test_defect=9, seed=7))
    a, b = _files(small), _files(more)
    shared = set(a) & set(b) - {syn.MARKER}
    assert {k for k in shared if "/train/" in k} and {k for k in shared if "ground_truth" in k}
    assert all(a[k] == b[k] for k in shared)  # train, test/good and the first defect images are unchanged


def test_seed_and_index_change_images() -> None:
    a = syn.render_sample("grain", 48, 0, "train/good", 0)[0]
    assert not np.array_equal(a, syn.render_sample("grain", 48, 1, "train/good", 0)[0])
    assert not np.array_equal(a, syn.render_sample("grain", 48, 0, "train/good", 1)[0])
    assert not np.array_equal(a, syn.render_sample("grain", 48, 0, "test/good", 0)[0])


# ------------------------------------------------------------------------------------ exact masks
@pytest.mark.parametrize("cat,kind", [(c, k) for c in CATEGORIES for k in DEFECTS[c]])
def test_mask_is_exactly_the_visibly_changed_pixels(cat: str, kind: str) -> None:
    for size in (32, 64):
        for index in range(4):
            clean, image, mask = syn.render_sample(cat, size, 3, f"test/{kind}", index)
            assert mask is not None and mask.shape == (size, size) and mask.sum() >= syn.MIN_PIXELS
            diff = np.abs(image.astype(int) - clean.astype(int)).max(axis=2)
            assert np.array_equal(diff > 0, mask)  # outside the mask: byte-identical to the clean image
            assert diff[mask].min() >= syn.MIN_VISIBLE
            assert diff[mask].mean() >= 15  # visible, not a faint change


def test_written_files_match_render_sample(small: Path) -> None:
    for cat in SMALL.categories:
        kind = DEFECTS[cat][0]
        clean, image, mask = syn.render_sample(cat, SMALL.size, SMALL.seed, f"test/{kind}", 1)
        on_disk = _load(small / cat / "test" / kind / "001.png")
        assert np.array_equal(on_disk.reshape(image.shape), image)
        assert np.array_equal(_load(small / cat / "ground_truth" / kind / "001_mask.png"), mask * 255)
        good = _load(small / cat / "train" / "good" / "000.png")
        twin = syn.render_sample(cat, SMALL.size, SMALL.seed, "train/good", 0)[0]
        assert np.array_equal(good.reshape(twin.shape), twin)


# ------------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("kwargs,name", [
    ({"size": 16}, "size"),
    ({"size": 5000}, "size"),
    ({"size": 64.0}, "size"),
    ({"n_train": 1}, "n_train"),
    ({"n_test_good": 0}, "n_test_good"),
    ({"n_test_defect": 2}, "n_test_defect"),  # weave has 3 defect types
    ({"seed": -1}, "seed"),
    ({"categories": ("weave", "nope")}, "nope"),
    ({"categories": ()}, "categories"),
    ({"categories": ("disc", "disc")}, "categories"),
])
def test_bad_values_raise_config_error_naming_the_option(tmp_path: Path, kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name) as info:
        make_dataset(tmp_path / "out", SyntheticSpec(**kwargs))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing written on a bad spec


def test_fewer_defect_images_allowed_when_categories_have_fewer_kinds(tmp_path: Path) -> None:
    spec = SyntheticSpec(size=32, n_train=2, n_test_good=1, n_test_defect=2, categories=("grain",))
    out = make_dataset(tmp_path / "g", spec)
    assert sorted(p.name for p in (out / "grain" / "ground_truth").iterdir()) == sorted(DEFECTS["grain"])


def test_interrupted_run_is_not_complete_and_can_be_resumed(tmp_path: Path) -> None:
    spec = SyntheticSpec(size=32, n_train=2, n_test_good=1, n_test_defect=2, categories=("grain",))
    out = make_dataset(tmp_path / "d", spec)
    before = _files(out)
    doc = json.loads((out / syn.MARKER).read_text())
    (out / syn.MARKER).write_text(json.dumps({**doc, "complete": False}))  # as if killed mid-way
    (out / "grain" / "test" / "hole" / "000.png").unlink()
    assert not syn.is_complete(out, spec)
    make_dataset(out, spec)
    assert syn.is_complete(out, spec) and _files(out) == before


def test_refuses_foreign_non_empty_dir_and_files(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="out"):
        make_dataset(foreign, SMALL)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    a_file = tmp_path / "file.png"
    a_file.write_bytes(b"x")
    with pytest.raises(ConfigError, match="out"):
        make_dataset(a_file, SMALL)


def test_rerun_same_spec_overwrites_identically_other_spec_refused(tmp_path: Path) -> None:
    spec = SyntheticSpec(size=32, n_train=2, n_test_good=1, n_test_defect=3, categories=("weave",))
    assert not syn.is_complete(tmp_path / "d", spec)
    out = make_dataset(tmp_path / "d", spec)
    assert syn.is_complete(out, spec) and not syn.is_complete(out, SyntheticSpec(size=32))
    before = _files(out)
    (out / "weave" / "train" / "good" / "000.png").write_bytes(b"corrupt")
    assert _files(make_dataset(out, spec, progress=True)) == before
    with pytest.raises(ConfigError, match="another spec"):
        make_dataset(out, SyntheticSpec(size=32, n_train=3, n_test_good=1, n_test_defect=3, categories=("weave",)))
    assert _files(out) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_dataset(empty, spec) == empty  # an existing empty dir is fine
