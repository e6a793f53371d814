"""`drdc cache verify` and `drdc cache gc`: check what a run store claims to hold, and clear what nobody needs.

verify re-reads every complete entry: every array has one row per image and matches the done flags' length,
every done flag is set, float arrays hold no NaN or inf, every checkpoint in files/ loads with weights_only=True,
and every input entry still exists. It reads arrays chunk by chunk, so it runs in bounded memory on large stores.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .cache import Entry, RunStore

SCAN = 64  # images read at a time


@dataclass(frozen=True)
class Finding:
    stage: str
    key: str
    ok: bool
    what: str


def _check_entry(store: RunStore, e: Entry) -> list[str]:
    problems: list[str] = []
    arrays = {name: a for name, a in e.group.arrays()}
    n = arrays["done"].shape[0] if "done" in arrays else None
    if n is not None:
        d = arrays["done"][:]
        if not d.all():
            problems.append(f"complete but {int(d.size - d.sum())}/{d.size} done flags are off")
    for name, a in sorted(arrays.items()):
        if n is not None and a.shape[0] != n:
            problems.append(f"array {name} has {a.shape[0]} rows, the done flags {n}")
        if np.issubdtype(a.dtype, np.floating):
            bad = sum(int((~np.isfinite(a[i : i + SCAN])).sum()) for i in range(0, a.shape[0], SCAN))
            if bad:
                problems.append(f"array {name} holds {bad} NaN/inf values")
    files = e.path / "files"
    for f in sorted(files.glob("*.pt")) if files.is_dir() else []:
        try:
            torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            problems.append(f"{f.name} does not load ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    for name, up_key in e.inputs.items():
        up = store.get(name.split("@")[0], up_key)
        if up is None:
            problems.append(f"input {name} {up_key} is gone")
    return problems


def verify(store: RunStore) -> Iterator[Finding]:
    """One Finding per entry: complete entries are checked, partial ones reported with their progress."""
    for e in store.entries():
        if not e.is_complete:
            prog = e.progress()
            state = "being written" if e.is_busy() else "abandoned (rerun its command to resume, or gc it)"
            yield Finding(e.stage, e.key, True, f"partial {prog[0]}/{prog[1]}, {state}" if prog else f"partial, {state}")
            continue
        problems = _check_entry(store, e)
        yield Finding(e.stage, e.key, not problems, "; ".join(problems) or "ok")


def reachable(store: RunStore) -> set[str]:
    """Paths of the current entries and of everything they were computed from."""
    keep: set[str] = set()
    todo = [store.get(s, k) for s, k in store.current_keys.items()]
    while todo:
        e = todo.pop()
        if e is None or str(e.path) in keep:
            continue
        keep.add(str(e.path))
        todo.extend(store.get(name.split("@")[0], k) for name, k in e.inputs.items())
    return keep


def collect(store: RunStore, partial: bool, stale: bool) -> list[Entry]:
    """Entries gc would remove: partial ones nobody is writing, and/or complete ones the current results do
    not depend on. Entries another process is writing are never touched."""
    keep = reachable(store) if stale else set()
    out = []
    for e in store.entries():
        if e.is_busy():
            continue
        if (partial and not e.is_complete) or (stale and e.is_complete and str(e.path) not in keep):
            out.append(e)
    return out


def remove(store: RunStore, entries: list[Entry]) -> None:
    with store.locked():
        for e in entries:
            shutil.rmtree(e.path)
        store.reload()
