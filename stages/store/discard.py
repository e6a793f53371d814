"""Removing an entry folder so that no moment of it is a damaged entry: the folder is first renamed, in one atomic
step, to a hidden name the store does not list, then deleted. A process killed while deleting (SIGKILL, or a
torchrun agent's SIGTERM arriving during a failed command's roll-back) leaves a hidden folder that `cache gc`
sweeps, never an entry whose zarr.json outlived its arrays."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

PREFIX = ".removing-"


def discard(path: Path) -> None:
    """Remove the entry folder `path` (absent: nothing to do). Deleted again until gone: a write that failed may
    leave the same call's other writes in flight (zarr gathers them asynchronously), and a chunk landing after the
    rename would make the folder again without its zarr.json."""
    for _ in range(50):
        if path.exists():
            trash = path.with_name(f"{PREFIX}{path.name}-{os.getpid()}-{time.monotonic_ns()}")
            try:
                os.rename(path, trash)
            except OSError:  # another process renamed it first, or a filesystem without rename: delete in place
                trash = path
            shutil.rmtree(trash, ignore_errors=True)
        time.sleep(0.02)  # let a write in flight land (then the next pass removes it)
        if not path.exists():
            return


def leftovers(root: Path) -> list[Path]:
    """Hidden folders of removals that a kill interrupted, under each stage folder of the store at root."""
    return sorted(p for d in root.iterdir() if d.is_dir() for p in d.glob(f"{PREFIX}*") if p.is_dir()) \
        if root.is_dir() else []

