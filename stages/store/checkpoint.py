"""Checkpoint IO in a run store: atomic writes, and weights-only loads that name the fix when a file is damaged."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from stages.errors import StoreError
from stages.store.faults import point

if TYPE_CHECKING:
    import torch


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


def load_weights(model: "torch.nn.Module", path: Path) -> "torch.nn.Module":
    """Load a state dict saved in the store into model. weights_only=True: a store is data, and unpickling it
    could run code. A corrupt file, a non-tensor payload or weights of another configuration is a StoreError
    naming the file, not a traceback."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StoreError(f"{path}: checkpoint missing; rerun the stage that trains it") from None
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError (zip), EOFError: all mean unusable
        raise StoreError(f"{path}: not a loadable weights-only checkpoint ({type(e).__name__}); "
                         f"{_remove_hint(path)}") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).splitlines()[1 if len(str(e).splitlines()) > 1 else 0].strip()[:160]
        raise StoreError(f"{path}: weights do not match the model configuration ({first}); "
                         f"{_remove_hint(path)}") from None
    return model


def _remove_hint(path: Path) -> str:
    """What brings a complete entry with a damaged model.pt back: the entry is complete, so a plain rerun would
    say 'cached'; removing it first makes the rerun train again."""
    from stages.store.cache import RunStore, remake
    from stages.store.registry import STAGES, hint

    entry = path.parent.parent  # RUN/stage/key/files/model.pt
    run, stage = entry.parent.parent, entry.parent.name
    if path.parent.name != "files" or stage not in STAGES:
        return "retrain the model it belongs to"
    try:
        again = remake(RunStore(run).get(stage, entry.name))
    except Exception:  # noqa: BLE001 - a store too damaged to read its params: the bare command
        again = hint(stage, str(run))
    return f"remove the entry with `drdc cache gc --run {run} --key {entry.name}`, then rerun `{again}`"
