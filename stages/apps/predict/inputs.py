"""What `drdc predict` is given: image files and folders, their match to the run's records (same path: the
record's ground truth and noise seeds) and the names shown and written for them."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from stages.data.images import IMAGE_SUFFIXES
from stages.errors import ConfigError, DataError
from stages.store.cache import Entry

_SKIP_DIRS = {"ground_truth"}  # MVTec/BTAD mask folders: never predicted on when a whole dataset folder is given


def collect_images(inputs: list[Path], on_refused=None) -> list[Path]:
    """Files given, plus the image files under folders given (recursive, sorted; hidden files, non-images and
    ground_truth/ folders skipped). A missing path, a non-image file named explicitly or an input with no image
    at all is a DataError naming it: raised, or passed to on_refused(path, error) and the others collected.
    (The exported infer.py collects its inputs the same way: stages/apps/export/infer.py.)"""
    found: list[Path] = []
    if not inputs:
        raise DataError("no image or folder given; pass IMAGE_OR_FOLDER...")

    def refuse(p: Path, message: str) -> None:
        if on_refused is None:
            raise DataError(message)
        on_refused(p, DataError(message))

    for p in inputs:
        p = Path(p).expanduser()
        if not p.exists():
            refuse(p, f"{p}: no such file or folder")
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                refuse(p, f"{p}: not an image file (expected one of {', '.join(sorted(IMAGE_SUFFIXES))})")
            else:
                found.append(p)
        else:
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") or part in _SKIP_DIRS for part in f.relative_to(p).parts))
            if not files:
                refuse(p, f"{p}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found.extend(files)
    return list(dict.fromkeys(found))


def content_id(path: Path) -> int:
    """A stable negative id from the file's bytes: record indices are >= 0, so the two never collide."""
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return -1 - int(digest[:15], 16)


@dataclass(frozen=True)
class Known:
    """What the run's index knows about an image given on the command line."""

    record: int | None  # record index when the file is one of the run's dataset images
    category: str | None
    defect: str | None  # ground truth ("good" or a defect name) of a dataset record
    mask: str | None  # its mask, relative to the data root


def check_category(index: Entry, category: str | None) -> None:
    """A given category must be one of the run's."""
    cats = index.attrs["categories"]
    if category is not None and category not in cats:
        raise ConfigError(f"'{category}' is not a category of this run ({', '.join(sorted(cats))})", "category")


def identify(path: Path, index: Entry, category: str | None) -> Known:
    """Match a file to a record of the run's dataset (same resolved path); else guess the category from an
    MVTec-like path <category>/{train,test}/<defect>/<file> when that category exists in the run."""
    check_category(index, category)
    cats = set(index.attrs["categories"])
    root = Path(index.params["root"])
    try:
        rel = path.resolve().relative_to(root).as_posix()
    except ValueError:
        rel = None
    if rel is not None:
        for i, r in enumerate(index.attrs["records"]):
            if r["path"] == rel:
                return Known(i, category or r["category"], r["defect"], r["mask"])
    parts = path.resolve().parts
    guess = parts[-4] if len(parts) >= 4 and parts[-3] in ("train", "test") and parts[-4] in cats else None
    return Known(None, category or guess, None, None)


def display_names(paths: list[Path]) -> list[str]:
    """Paths relative to the images' common folder (just the name for a single image): short table rows."""
    if len(paths) == 1:
        return [paths[0].name]
    common = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    return [p.resolve().relative_to(common).as_posix() for p in paths]


def picture_stems(paths: list[Path]) -> list[str]:
    """Readable picture names without suffix: the stem, prefixed by as many parent folders as it takes to tell
    the images apart (compared as a case-insensitive, normalising filesystem sees names). Any name still shared
    (files that differ only in their extension or the case of a folder) is told apart by
    stages.apps.outputs.Outputs.unique."""
    from stages.apps.outputs import fold

    depth = 1
    while True:
        names = ["_".join([*p.parent.parts[len(p.parent.parts) - depth + 1 :], p.stem]) if depth > 1 else p.stem
                 for p in paths]
        if len({fold(n) for n in names}) == len(names) or depth > max(len(p.parts) for p in paths):
            return [n.replace("/", "_").lstrip("_") or "image" for n in names]
        depth += 1


def picture_names(paths: list[Path]) -> list[str]:
    """One distinct PNG name per path (as `predict --out` names its pictures; their masks, <name>_mask.png,
    collide with no picture either)."""
    from stages.apps.outputs import distinct_stems

    return [s + ".png" for s in distinct_stems(picture_stems(paths), (".png", "_mask.png"))]
