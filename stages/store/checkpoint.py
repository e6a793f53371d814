"""Checkpoint IO in a run store: atomic writes, and weights-only loads that name the fix when a file is damaged."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from stages.errors import Part, Step, StoreError
from stages.store.faults import point

if TYPE_CHECKING:
    import torch

    from stages.store.cache import Entry, RunStore


def atomic_save(write, path: Path) -> None:
    """Write via write(tmp_path) then rename, so a kill mid-write never leaves a truncated file at path."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.time_ns()}.partial")
    try:
        write(tmp)
        point("save.written")
        os.replace(tmp, path)
        point("save.renamed")
    finally:
        tmp.unlink(missing_ok=True)


def save_tensors(obj, path: Path) -> None:
    """torch.save through an open file: the archive inside is then named "archive", not after the (temporary)
    file name, so equal tensors make equal bytes (a resumed training's model.pt is the uninterrupted one's)."""
    import torch

    with open(path, "wb") as f:
        torch.save(obj, f)


def load_weights(model: "torch.nn.Module", path: Path, entry: "Entry | None" = None) -> "torch.nn.Module":
    """Load a state dict saved in the store into model. weights_only=True: a store is data, and unpickling it
    could run code. A missing, empty or corrupt file, a non-tensor payload or weights of another configuration
    is a StoreError naming the file and the fix (entry: the entry it belongs to), not a traceback."""
    import torch

    def damaged(what: str) -> StoreError:
        if entry is not None:
            return entry.damage(f"{path.name}: {what}")
        return StoreError(f"{path}: {what}; ", *_remove_hint(path))

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        if entry is not None:
            raise damaged("missing") from None
        raise StoreError(f"{path}: checkpoint missing; rerun the stage that trains it") from None
    except (PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError (zip), EOFError: all mean unusable
        raise damaged(f"not a loadable weights-only checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise damaged(f"not weights but a {type(state).__name__}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, KeyError, ValueError) as e:
        first = str(e).splitlines()[1 if len(str(e).splitlines()) > 1 else 0].strip()[:160]
        raise damaged(f"weights do not match the model configuration ({first})") from None
    return model


def _remove_hint(path: Path) -> tuple[Part, ...]:
    """What brings a complete entry with a damaged model.pt back: the entry is complete, so a plain rerun would
    say 'cached'; removing it first makes the rerun train again."""
    from stages.config.registry import STAGES
    from stages.store.cache import RunStore
    from stages.store.integrity import gc_step

    entry = path.parent.parent  # RUN/stage/key/files/model.pt
    run, stage = entry.parent.parent, entry.parent.name
    if path.parent.name != "files" or stage not in STAGES:
        return ("retrain the model it belongs to",)
    try:
        again = RunStore(run).get(stage, entry.name).step()
    except Exception:  # noqa: BLE001 - a store too damaged to read its params: the bare step
        again = Step(stage, str(run))
    return ("remove the entry with ", gc_step(str(run), entry.name), ", then rerun ", again)


def adopt_shorter(store: "RunStore", entry: "Entry", grows: str, unit: str) -> "Entry | None":
    """Start a new training entry from the checkpoint of a shorter run of the same settings: the entry of the same
    stage and inputs whose params differ only by a smaller `grows` (e.g. steps), with the most progress in its
    files/last.pt. Valid only for a training whose first k units do not depend on its length (train-diff: constant
    learning rate, every step's draws seeded by the step), so the extended run ends with the weights a run from
    scratch would have. The file is copied (the shorter entry keeps its own); returns the entry adopted."""
    import shutil

    import torch

    mine = {k: v for k, v in entry.params.items() if k != grows}
    best, best_at = None, 0
    for e in store.entries():
        q = e.params
        if (e.stage != entry.stage or e.key == entry.key or e.inputs != entry.inputs
                or {k: v for k, v in q.items() if k != grows} != mine or not q.get(grows, 0) < entry.params[grows]):
            continue
        last = e.files / "last.pt"
        if not last.is_file():
            continue
        try:
            at = int(torch.load(last, map_location="cpu", weights_only=True)[unit.rstrip("s")])
        except Exception:  # noqa: BLE001 - a damaged or foreign checkpoint is simply not adopted
            continue
        if at > best_at:
            best, best_at = e, at
    if best is None:
        return None
    atomic_save(lambda tmp: shutil.copyfile(best.files / "last.pt", tmp), entry.files / "last.pt")
    entry.update(extends={"key": best.key, unit: best_at})
    return best
