"""The files drdc writes outside the run store (predict, export, report, bound, ablate, config, the demo), under one
policy: nothing drdc writes replaces a file it did not write in this command.

- Every output is claimed before the command does its work. A path that exists is refused in one line naming it,
  unless the command was given --overwrite (then drdc's outputs replace what is there, and only those paths).
- Two outputs of one command never land on one name: names are compared as a case-insensitive filesystem
  (macOS, Windows) and unicode normalisation (macOS) see them, so `A.png` and `a.png`, or an "é" composed and
  decomposed, are one name. Names drdc makes up (a picture per input image, a plot per category) are made
  distinct (`unique`); two paths the user gave that are one file are refused.
- Each file is written whole: into a temporary file beside it, then linked into place, which fails rather than
  replace a file that appeared meanwhile.
- A command that fails removes the files and the folders it created (stages.store.rollback runs `undo`).
"""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Callable

from stages.errors import ConfigError, Option
from stages.store import rollback

OVERWRITE_HINT = ("pass ", Option("overwrite"), " to replace it, or give another path")
MAX_NAME = 200  # bytes of a made-up file name (filesystems allow 255)


def fold(path: Path | str) -> str:
    """The name a case-insensitive, normalising filesystem sees: two paths with one fold are one file there."""
    return unicodedata.normalize("NFC", str(Path(path).absolute())).casefold()


def fit_name(stem: str, suffix: str, limit: int = MAX_NAME) -> str:
    """stem + suffix, the stem cut (at a character boundary) so the name fits `limit` bytes."""
    room = limit - len(suffix.encode())
    data = stem.encode()
    if len(data) > room:
        stem = data[:room].decode(errors="ignore")
    return stem + suffix


def distinct_stems(stems: list[str], suffixes: tuple[str, ...], taken: set[str] | None = None,
                   folder: Path = Path(".")) -> list[str]:
    """One stem per wish, `stem` or else `stem~2`, `stem~3` ..., so that the files <stem><suffix> (one per suffix:
    a picture and its mask) are all distinct names, as a case-insensitive, normalising filesystem compares them,
    and none is in `taken` (folds of paths in folder). Long stems are cut to fit a file name."""
    taken = set(taken or ())
    room = MAX_NAME - max(len(s.encode()) for s in suffixes) - 8  # 8: room for ~k
    out = []
    for stem in stems:
        base = fit_name(stem, "", room)
        k = 1
        while True:
            cand = base if k == 1 else f"{base}~{k}"
            names = [fold(folder / f"{cand}{s}") for s in suffixes]
            if not any(n in taken for n in names):
                taken.update(names)
                out.append(cand)
                break
            k += 1
    return out


class Outputs:
    """The files one command writes. claim() each path before the work; write() each file after."""

    def __init__(self, overwrite: bool = False):
        self.overwrite = overwrite
        self.claimed: dict[str, tuple[Path, str]] = {}  # fold -> (path, the option that named it)
        self.created: list[Path] = []  # files this command made (not the ones it replaced)
        self.folders: list[Path] = []  # folders it made, outermost first
        rollback.UNDO.append(self.undo)

    def claim(self, path: Path, option: str) -> Path:
        """Reserve `path` for this command: refused when another output of it already has this name, when it is a
        folder, or when it exists and --overwrite was not given."""
        path = Path(path)
        other = self.claimed.get(fold(path))
        if other is not None:
            raise ConfigError(f"{path} is also where {other[1]} writes ({other[0]}); give distinct paths", option)
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; give a file name", option)
        if (path.exists() or path.is_symlink()) and not self.overwrite:
            raise ConfigError((f"{path} exists, and drdc replaces no file it did not write; ", *OVERWRITE_HINT),
                              option)
        self.claimed[fold(path)] = (path, option)
        return path

    def unique(self, folder: Path, stems: list[str], suffixes: tuple[str, ...], option: str) -> list[str]:
        """distinct_stems of `stems` in folder, each file folder/<stem><suffix> claimed."""
        taken = {k for k in self.claimed}
        out = distinct_stems(stems, suffixes, {k for k in taken}, folder)
        for stem in out:
            for s in suffixes:
                self.claim(folder / f"{stem}{s}", option)
        return out

    def write(self, path: Path, make: Callable[[Path], object]) -> Path:
        """Write a claimed path: make(tmp) writes the file's content to tmp, which then takes its place."""
        path = Path(path)
        if fold(path) not in self.claimed:
            raise ValueError(f"{path} was not claimed before it was written")  # a bug, not a user's error
        self._folders(path.parent)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.drdc-partial{path.suffix}")  # the suffix names the format
        existed = path.exists() or path.is_symlink()
        try:
            make(tmp)
            if self.overwrite:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)  # never replaces: a file that appeared meanwhile stays
                except FileExistsError:
                    raise ConfigError((f"{path} appeared while drdc was writing it and was left as it is; ",
                                       *OVERWRITE_HINT), self.claimed[fold(path)][1]) from None
                except OSError:  # a filesystem without hard links
                    if path.exists():
                        raise ConfigError((f"{path} appeared while drdc was writing it; ", *OVERWRITE_HINT),
                                          self.claimed[fold(path)][1]) from None
                    os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        if not existed:
            self.created.append(path)
        return path

    def write_text(self, path: Path, text: str) -> Path:
        return self.write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def _folders(self, folder: Path) -> None:
        missing = [p for p in (*reversed(folder.absolute().parents), folder.absolute()) if not p.exists()]
        if missing:
            folder.mkdir(parents=True, exist_ok=True)
            self.folders += [p for p in missing if p not in self.folders]

    def undo(self) -> None:
        """Remove what this command wrote and the folders it made (when left empty): the command failed."""
        for p in reversed(self.created):
            Path(p).unlink(missing_ok=True)
        for d in reversed(self.folders):
            try:
                d.rmdir()
            except OSError:
                pass
        self.created, self.folders = [], []
