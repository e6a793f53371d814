"""Dataset discovery: MVTec-AD, BTAD, VisA and plain-folder layouts, several categories at once (the unified
setting).

MVTec-AD: <root>/<category>/{train/good, test/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}
BTAD:     <root>/<NN>/{train/ok, test/ok, test/ko, ground_truth/ko/<stem>.<ext>}
VisA:     <root>/split_csv/1cls.csv (columns object,split,label,image,mask; split train|test, label normal|anomaly,
          paths relative to the root, e.g. <object>/Data/Images/{Normal,Anomaly}/x.JPG and
          <object>/Data/Masks/Anomaly/x.png)
folder:   <root>/<category>/{good, <defect>..., optional ground_truth/<defect>/ or masks/<defect>/ with
          <stem>_mask.<ext> or <stem>.<ext>}; the good images are split into train and test by FOLDER_TEST_SHARE
          (see `folder_split`)
A root that is itself one category (holds train/ and test/, or good/) is accepted too. `auto` tells them apart:
a root with split_csv/1cls.csv is VisA; otherwise each category folder holds exactly one of train/good
(MVTec-AD), train/ok (BTAD) and good/ (folder), and all categories must agree.

Discovery reads directory listings (and VisA's CSV) only; decoding happens in the index stage.
"""
from __future__ import annotations

import csv
import hashlib
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from stages.data.choices import LAYOUTS  # noqa: F401 (plain Python, re-exported)
from stages.data.images import IMAGE_SUFFIXES
from stages.errors import DataError, Option

_JUNK = {"thumbs.db", "desktop.ini"}
_GOOD = {"mvtec": "good", "btad": "ok"}
VISA_CSV = "split_csv/1cls.csv"  # VisA's one-class split: the file that says a root is VisA
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
FOLDER_TEST_SHARE = 0.2  # the folder layout: this share of good/ (at least one image) goes to the test split
_FOLDER_RESERVED = {"good", "ground_truth", "masks"}  # a folder-layout category's folders that are no defect kind


@dataclass(frozen=True)
class Record:
    """One image of the dataset. Paths are relative to the dataset root (POSIX), so a store can be moved
    with its data and no recorded path can point outside the root."""

    category: str
    split: str  # "train" | "test"
    label: int  # 0 normal, 1 anomalous
    defect: str  # "good" for normal images, else the defect folder name
    path: str
    mask: str | None  # None for normal images, and for defect images of a category without ground truth

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Dataset:
    root: Path
    layout: str
    records: tuple[Record, ...]
    masked_categories: tuple[str, ...]  # categories with pixel ground truth
    orphan_masks: tuple[str, ...] = ()  # ground-truth files no test image uses (reported, not fatal)
    sources: tuple[str, ...] = ()  # files besides the images that decide the records (VisA's split CSV)

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.category for r in self.records))


def _image_files(folder: Path) -> list[Path]:
    """Sorted image files of a folder; hidden files and OS junk skipped, anything else non-image refused."""
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.name.lower() in _JUNK:
            continue
        if p.is_dir():
            raise DataError(f"{p}: unexpected folder inside an image folder")
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{p}: not an image file (expected one of {', '.join(sorted(IMAGE_SUFFIXES))})")
        files.append(p)
    return files


def _detect_layout(cat_dir: Path) -> str:
    found = [name for name, marker in (("mvtec", "train/good"), ("btad", "train/ok"), ("folder", "good"))
             if (cat_dir / marker).is_dir()]
    if len(found) > 1:
        raise DataError(f"{cat_dir}: holds both {' and '.join(found)} layouts' folders (train/good, train/ok, good); "
                        "keep one, or name the layout (", Option("layout", "index"), ")")
    if not found:
        raise DataError(f"{cat_dir}: no train/good (MVTec-AD), train/ok (BTAD) or good/ (folder layout) folder, "
                        f"and the root has no {VISA_CSV} (VisA)")
    return found[0]


def _mask_files(gt_dir: Path) -> dict[str, list[Path]]:
    """{stem: files} of the image files (any image suffix, in any case) in a ground-truth folder."""
    out: dict[str, list[Path]] = {}
    for p in sorted(gt_dir.iterdir()) if gt_dir.is_dir() else []:
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            out.setdefault(p.stem, []).append(p)
    return out


def _find_mask(masks: dict[str, list[Path]], image: Path) -> Path | None:
    """The mask of a defect image: MVTec names it <stem>_mask.<ext>, BTAD <stem>.<ext>, with any image suffix in
    any case (the rules of image look-up; ext may differ from the image's). Two candidates are an error naming
    both, never a silent pick."""
    found = masks.get(f"{image.stem}_mask", []) + masks.get(image.stem, [])
    if len(found) > 1:
        raise DataError(f"{image}: more than one mask fits it: {found[0]} and {found[1]}; keep one")
    return found[0] if found else None


def _test_folder(category: str, d: Path, gt_root: Path | None, normal: bool, rel: Callable[[Path], str]
                 ) -> list[Record]:
    """The test records of one folder of images: good ones (normal), or defect ones each with its mask under
    gt_root/<folder> when the layout has masks (gt_root None: image labels only)."""
    files = _image_files(d)
    if gt_root is not None:
        _one_stem_each(files)
        masks = _mask_files(gt_root / d.name)
    out = []
    for p in files:
        mask = None
        if gt_root is not None:
            m = _find_mask(masks, p)
            if m is None:
                raise DataError(f"{p}: defect image has no mask (looked for {gt_root / d.name / p.stem}_mask.png "
                                f"and {gt_root / d.name / p.stem}.png)")
            mask = rel(m)
        out.append(Record(category, "test", 0 if normal else 1, "good" if normal else d.name, rel(p), mask))
    return out


def _one_stem_each(files: list[Path]) -> None:
    """Images whose names differ only by extension would share one mask: an error naming both."""
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise DataError(f"{p}: has the same name as {seen[p.stem]} but another extension, so both would use "
                            "one mask; rename one")
        seen[p.stem] = p


def _category_dirs(root: Path, layout: str = "auto") -> list[Path]:
    if ((root / "train").is_dir() and (root / "test").is_dir() and layout != "folder") or (
            (root / "good").is_dir() and layout in ("auto", "folder")):
        return [root]
    dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if not dirs:
        raise DataError(f"{root}: no category folders found (expected <root>/<category>/train, test, or "
                        "<root>/<category>/good)")
    return dirs


def _orphans(root: Path, gt_root: Path, used: set[str]) -> list[str]:
    """Mask files under ground_truth/ that belong to no test image: often a renamed or deleted image."""
    if not gt_root.is_dir():
        return []
    files = (p for p in gt_root.rglob("*") if p.is_file() and not p.name.startswith("."))
    return sorted(r for p in files if (r := p.relative_to(root).as_posix()) not in used
                  and p.name.lower() not in _JUNK)


def _scan_category(root: Path, cat_dir: Path, layout: str) -> tuple[list[Record], bool]:
    category = cat_dir.name
    good = _GOOD[layout]
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    train_dir, test_dir, gt_root = cat_dir / "train" / good, cat_dir / "test", cat_dir / "ground_truth"
    train = _image_files(train_dir) if train_dir.is_dir() else []
    if not train:
        raise DataError(f"{train_dir}: category '{category}' has no training images")
    if not test_dir.is_dir():
        raise DataError(f"{test_dir}: category '{category}' has no test folder")
    has_gt = gt_root.is_dir()
    records = [Record(category, "train", 0, "good", rel(p), None) for p in train]
    for d in sorted(x for x in test_dir.iterdir() if x.is_dir() and not x.name.startswith(".")):
        normal = d.name == good
        records += _test_folder(category, d, None if normal or not has_gt else gt_root, normal, rel)
    n_test = sum(r.split == "test" for r in records)
    if n_test == 0:
        raise DataError(f"{test_dir}: category '{category}' has no test images")
    return records, has_gt


def folder_split(category: str, good: list[Path]) -> set[Path]:
    """The good images of a folder-layout category that go to the test split: round(FOLDER_TEST_SHARE * n), at
    least one, at most n - 1, taken from the front of a permutation of the files sorted by name, seeded by the
    category's name (crc32). The same files give the same split on every machine and every run."""
    files = sorted(good, key=lambda p: p.name)
    k = min(len(files) - 1, max(1, round(FOLDER_TEST_SHARE * len(files))))
    perm = np.random.default_rng([17, zlib.crc32(category.encode())]).permutation(len(files))
    return {files[j] for j in perm[:k]}


def _scan_folder_category(root: Path, cat_dir: Path) -> tuple[list[Record], Path | None]:
    """A folder-layout category: good/, one folder per defect kind, masks in ground_truth/<defect>/ or
    masks/<defect>/ (optional). Returns the records and the mask folder (None: no masks)."""
    category = cat_dir.name
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    good = _image_files(cat_dir / "good")
    if len(good) < 2:
        raise DataError(f"{cat_dir / 'good'}: category '{category}' needs at least 2 good images (one to train on, "
                        f"one to test), found {len(good)}")
    holders = [cat_dir / n for n in ("ground_truth", "masks") if (cat_dir / n).is_dir()]
    if len(holders) > 1:
        raise DataError(f"{cat_dir}: holds both ground_truth/ and masks/; keep the masks in one of them")
    gt_root = holders[0] if holders else None
    test_good = folder_split(category, good)
    records = [Record(category, "train", 0, "good", rel(p), None) for p in good if p not in test_good]
    records += [Record(category, "test", 0, "good", rel(p), None) for p in sorted(test_good)]
    defects = sorted(d for d in cat_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
                     and d.name not in _FOLDER_RESERVED)
    for d in defects:
        records += _test_folder(category, d, gt_root, False, rel)
    return records, gt_root


def _discover_visa(root: Path, categories: tuple[str, ...] | None) -> Dataset:
    """VisA: the records of split_csv/1cls.csv, each row checked (an error names the CSV's line and the file)."""
    path = root / VISA_CSV
    if not path.is_file():
        raise DataError(f"{path}: no VisA split file (the VisA layout reads {VISA_CSV} under the root)")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if not rows or tuple(c.strip().lower() for c in rows[0]) != VISA_COLUMNS:
        raise DataError(f"{path}:1: expected the columns {','.join(VISA_COLUMNS)} (got {','.join(rows[0]) if rows else 'nothing'})")
    by_cat: dict[str, list[Record]] = {}
    seen: dict[str, int] = {}
    for line, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(VISA_COLUMNS):
            raise DataError(f"{path}:{line}: expected {len(VISA_COLUMNS)} columns, got {len(row)}")
        obj, split, label, image, mask = (c.strip() for c in row)
        where = f"{path}:{line}"
        if not obj:
            raise DataError(f"{where}: empty object (category)")
        if split not in ("train", "test"):
            raise DataError(f"{where}: split must be train or test (got {split!r})")
        if label not in ("normal", "anomaly"):
            raise DataError(f"{where}: label must be normal or anomaly (got {label!r})")
        if split == "train" and label == "anomaly":
            raise DataError(f"{where}: an anomalous image in the train split")
        for name, value in (("image", image), ("mask", mask)):
            if value and not _inside(value):
                raise DataError(f"{where}: {name} path {value!r} leaves the dataset root")
        img = root / image
        if not image or not img.is_file():
            raise DataError(f"{where}: image {img} does not exist")
        if img.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{where}: {img} is not an image file")
        if image in seen:
            raise DataError(f"{where}: image {image} is listed twice (also on line {seen[image]})")
        seen[image] = line
        if label == "normal" and mask:
            raise DataError(f"{where}: normal image {img} has a mask ({mask})")
        if mask and not (root / mask).is_file():
            raise DataError(f"{where}: mask {root / mask} of {img} does not exist")
        by_cat.setdefault(obj, []).append(Record(obj, split, int(label == "anomaly"),
                                                 "anomaly" if label == "anomaly" else "good",
                                                 Path(image).as_posix(), Path(mask).as_posix() if mask else None))
    if categories:
        missing = [c for c in categories if c not in by_cat]
        if missing:
            raise DataError(f"{path}: no object {', '.join(missing)} (found: {', '.join(sorted(by_cat))})")
    records: list[Record] = []
    masked: list[str] = []
    orphans: list[str] = []
    for cat in sorted(by_cat):
        if categories and cat not in categories:
            continue
        recs = sorted(by_cat[cat], key=lambda r: (r.split != "train", r.label, r.path))  # train first, as MVTec
        if not any(r.split == "train" for r in recs):
            raise DataError(f"{path}: object '{cat}' has no train images")
        if not any(r.split == "test" for r in recs):
            raise DataError(f"{path}: object '{cat}' has no test images")
        anomalous = [r for r in recs if r.label == 1]
        with_mask = [r for r in anomalous if r.mask]
        if with_mask and len(with_mask) != len(anomalous):  # as for MVTec: a category has masks for all or none
            bad = next(r for r in anomalous if not r.mask)
            raise DataError(f"{path}:{seen[bad.path]}: anomalous image {root / bad.path} has no mask, while other "
                            f"images of '{cat}' have one")
        if with_mask:
            masked.append(cat)
            orphans.extend(_orphans(root, root / cat / "Data" / "Masks", {r.mask for r in with_mask}))
        records.extend(recs)
    return Dataset(root, "visa", tuple(records), tuple(masked), tuple(orphans), sources=(VISA_CSV,))


def _inside(rel: str) -> bool:
    """A recorded path stays under the root: relative, no '..', POSIX separators."""
    from pathlib import PurePosixPath

    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel


def discover(root: Path, layout: str = "auto", categories: tuple[str, ...] | None = None) -> Dataset:
    """Scan root into records (train first, then test, category by category, sorted by name).

    Raises DataError naming the folder or file for a missing root, wrong layout, empty category, non-image
    file or defect image without a mask.
    """
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout '{layout}' (choose from {', '.join(LAYOUTS)})")
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise DataError(f"{root}: dataset root does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: dataset root is not a folder")
    if layout == "visa" or (layout == "auto" and (root / VISA_CSV).is_file()):
        return _discover_visa(root, categories)
    dirs = _category_dirs(root, layout)
    if categories:
        names = {d.name for d in dirs}
        missing = [c for c in categories if c not in names]
        if missing:
            raise DataError(f"{root}: no category {', '.join(missing)} (found: {', '.join(sorted(names))})")
        dirs = [d for d in dirs if d.name in categories]
    found_layouts = {d: (_detect_layout(d) if layout == "auto" else layout) for d in dirs}
    if len(set(found_layouts.values())) > 1:
        kinds = sorted(set(found_layouts.values()))
        raise DataError(f"{root}: categories mix the {' and '.join(kinds)} layouts (e.g. "
                        f"{next(d for d, k in found_layouts.items() if k == kinds[0])} and "
                        f"{next(d for d, k in found_layouts.items() if k == kinds[1])}); name the layout "
                        "(", Option("layout", "index"), ") or split the root")
    records: list[Record] = []
    masked: list[str] = []
    orphans: list[str] = []
    for d in dirs:
        if found_layouts[d] == "folder":
            recs, gt_root = _scan_folder_category(root, d)
            has_gt = gt_root is not None
        else:
            recs, has_gt = _scan_category(root, d, found_layouts[d])
            gt_root = d / "ground_truth"
        records.extend(recs)
        if gt_root is not None:
            orphans.extend(_orphans(root, gt_root, {r.mask for r in recs if r.mask}))
        if has_gt:
            masked.append(d.name)
    return Dataset(root, next(iter(found_layouts.values())), tuple(records), tuple(masked), tuple(orphans))


def resolve_recorded(root: Path, rel: str) -> Path:
    """root / rel for a path recorded in a run store. A store is data a user may have been handed: an absolute
    path or a '..' that would leave the dataset root is refused rather than followed."""
    from pathlib import PurePosixPath

    if not _inside(rel):
        raise DataError(f"{rel!r}: recorded path leaves the dataset root {root}; the run store was tampered with")
    return Path(root) / PurePosixPath(rel)


EVAL_SPLITS: tuple[str, ...] = ("val", "test")  # the splits every inference stage maps and `score` measures


def split_indices(records: list[dict], split: str | tuple[str, ...]) -> np.ndarray:
    """Positions of the records of one split ("train", "val" or "test") or of several, in index order: the row
    order of every per-image array of the inference stages (which cover EVAL_SPLITS)."""
    splits = (split,) if isinstance(split, str) else split
    return np.array([i for i, r in enumerate(records) if r["split"] in splits], dtype=np.int64)


def fingerprint(root: Path, records: tuple[Record, ...], sources: tuple[str, ...] = ()) -> str:
    """Hash of every recorded file's relative path, size and mtime (and of `sources`, the files that decide the
    records, such as VisA's split CSV): a file added, removed or modified changes it, so downstream cache keys
    change (content hashing a 5 GB dataset on every index is too slow)."""
    h = hashlib.sha256()
    paths = sorted({r.path for r in records} | {r.mask for r in records if r.mask} | set(sources))
    for p in paths:
        try:
            st = os.stat(resolve_recorded(root, p))
        except OSError as e:  # vanished since discovery, a symlink loop, no permission
            raise DataError(f"{root / p}: cannot read ({e.strerror})") from None
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def split_train(records: list[dict], holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """Record indices of train/good images for fitting and for validation, chosen per category by a seeded
    permutation (never from the test split)."""
    fit, val = [], []
    by_cat: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r["split"] == "train":
            by_cat.setdefault(r["category"], []).append(i)
    for cat, idx in by_cat.items():
        rng = np.random.default_rng([seed, zlib.crc32(cat.encode())])
        perm = [idx[j] for j in rng.permutation(len(idx))]
        k = int(round(holdout * len(idx)))
        val += sorted(perm[:k])
        fit += sorted(perm[k:])
    return sorted(fit), sorted(val)
