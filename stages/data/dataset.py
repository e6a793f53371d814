"""Dataset discovery: MVTec-AD and BTAD layouts, several categories at once (the unified setting).

MVTec-AD: <root>/<category>/{train/good, test/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}
BTAD:     <root>/<NN>/{train/ok, test/ok, test/ko, ground_truth/ko/<stem>.<ext>}
A root that is itself one category (holds train/ and test/) is accepted too.

Discovery reads directory listings and image headers only; decoding happens in the index stage.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from stages.data.choices import LAYOUTS  # noqa: F401 (plain Python, re-exported)
from stages.data.images import IMAGE_SUFFIXES
from stages.errors import DataError

_JUNK = {"thumbs.db", "desktop.ini"}
_GOOD = {"mvtec": "good", "btad": "ok"}


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
    if (cat_dir / "train" / "good").is_dir():
        return "mvtec"
    if (cat_dir / "train" / "ok").is_dir():
        return "btad"
    raise DataError(f"{cat_dir}: no train/good (MVTec-AD) or train/ok (BTAD) folder")


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


def _one_stem_each(files: list[Path]) -> None:
    """Images whose names differ only by extension would share one mask: an error naming both."""
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise DataError(f"{p}: has the same name as {seen[p.stem]} but another extension, so both would use "
                            "one mask; rename one")
        seen[p.stem] = p


def _category_dirs(root: Path) -> list[Path]:
    if (root / "train").is_dir() and (root / "test").is_dir():
        return [root]
    dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if not dirs:
        raise DataError(f"{root}: no category folders found (expected <root>/<category>/train, test)")
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
        files = _image_files(d)
        if not normal and has_gt:
            _one_stem_each(files)
            masks = _mask_files(gt_root / d.name)
        for p in files:
            mask = None
            if not normal and has_gt:
                m = _find_mask(masks, p)
                if m is None:
                    raise DataError(f"{p}: defect image has no mask (looked for {gt_root / d.name / p.stem}_mask.png)")
                mask = rel(m)
            records.append(Record(category, "test", 0 if normal else 1, "good" if normal else d.name, rel(p), mask))
    n_test = sum(r.split == "test" for r in records)
    if n_test == 0:
        raise DataError(f"{test_dir}: category '{category}' has no test images")
    return records, has_gt


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
    dirs = _category_dirs(root)
    if categories:
        names = {d.name for d in dirs}
        missing = [c for c in categories if c not in names]
        if missing:
            raise DataError(f"{root}: no category {', '.join(missing)} (found: {', '.join(sorted(names))})")
        dirs = [d for d in dirs if d.name in categories]
    found_layouts = {d: (_detect_layout(d) if layout == "auto" else layout) for d in dirs}
    if len(set(found_layouts.values())) > 1:
        raise DataError(f"{root}: categories mix MVTec-AD and BTAD layouts; name the layout (index --layout) or split the root")
    records: list[Record] = []
    masked: list[str] = []
    orphans: list[str] = []
    for d in dirs:
        recs, has_gt = _scan_category(root, d, found_layouts[d])
        records.extend(recs)
        orphans.extend(_orphans(root, d / "ground_truth", {r.mask for r in recs if r.mask}))
        if has_gt:
            masked.append(d.name)
    return Dataset(root, next(iter(found_layouts.values())), tuple(records), tuple(masked), tuple(orphans))


def resolve_recorded(root: Path, rel: str) -> Path:
    """root / rel for a path recorded in a run store. A store is data a user may have been handed: an absolute
    path or a '..' that would leave the dataset root is refused rather than followed."""
    from pathlib import PurePosixPath

    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise DataError(f"{rel!r}: recorded path leaves the dataset root {root}; the run store was tampered with")
    return Path(root) / p


EVAL_SPLITS: tuple[str, ...] = ("val", "test")  # the splits every inference stage maps and `score` measures


def split_indices(records: list[dict], split: str | tuple[str, ...]) -> np.ndarray:
    """Positions of the records of one split ("train", "val" or "test") or of several, in index order: the row
    order of every per-image array of the inference stages (which cover EVAL_SPLITS)."""
    splits = (split,) if isinstance(split, str) else split
    return np.array([i for i, r in enumerate(records) if r["split"] in splits], dtype=np.int64)


def fingerprint(root: Path, records: tuple[Record, ...]) -> str:
    """Hash of every recorded file's relative path, size and mtime: a file added, removed or modified
    changes it, so downstream cache keys change (content hashing a 5 GB dataset on every index is too slow)."""
    h = hashlib.sha256()
    paths = sorted({r.path for r in records} | {r.mask for r in records if r.mask})
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
