"""`drdc cache verify` and `drdc cache gc`: check what a run store claims to hold, and clear what nobody needs.

verify re-reads every complete entry: every array has one row per image and matches the done flags' length,
every done flag is set, float arrays hold no NaN or inf, every checkpoint in files/ loads with weights_only=True,
the files its stage must hold are there (model.pt, config.json), and every input entry still exists. It reads
arrays chunk by chunk, so it runs in bounded memory on large stores. A fault is one finding and verify goes on:
an unreadable array, chunk or attrs file included. `repair` removes the damaged entries, so that rerunning
their commands recomputes them.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from stages.store.cache import Entry, RunStore
from stages.store.commands import command, entry_command
from stages.store.registry import STAGES

SCAN = 64  # images read at a time


@dataclass(frozen=True)
class Finding:
    stage: str
    key: str
    ok: bool
    what: str


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"


def _check_entry(store: RunStore, e: Entry) -> list[str]:
    problems: list[str] = []
    try:
        arrays = e.arrays()
    except Exception as exc:  # noqa: BLE001 - an unreadable array's metadata is the finding
        return [f"arrays unreadable ({_short(exc)})"]
    n = None
    if "done" in arrays:
        try:
            d = arrays["done"][:]
            n = d.shape[0]
            if not d.all():
                problems.append(f"complete but {int(d.size - d.sum())}/{d.size} done flags are off")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"array done unreadable ({_short(exc)})")
    for name, a in sorted(arrays.items()):
        if n is not None and a.shape[0] != n:
            problems.append(f"array {name} has {a.shape[0]} rows, the done flags {n}")
        try:
            if np.issubdtype(a.dtype, np.floating):
                bad = sum(int((~np.isfinite(a[i : i + SCAN])).sum()) for i in range(0, a.shape[0], SCAN))
                if bad:
                    problems.append(f"array {name} holds {bad} NaN/inf values")
            elif name != "done":
                for i in range(0, a.shape[0], SCAN):  # every chunk must decode
                    a[i : i + SCAN]
        except Exception as exc:  # noqa: BLE001 - a corrupt chunk
            problems.append(f"array {name} unreadable ({_short(exc)})")
    problems += [f"{f} is missing (rerunning the command that made the entry restores it)"
                 for f in e.missing_files()]
    files = e.path / "files"
    for f in sorted(files.glob("*.pt")) if files.is_dir() else []:
        try:
            torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            problems.append(f"{f.name} does not load ({_short(exc)})")
    for f in sorted(files.glob("*.json")) if files.is_dir() else []:
        try:
            json.loads(f.read_text())
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{f.name} is not valid JSON ({_short(exc)})")
    for name, up_key in e.inputs.items():
        up = store.get(name.split("@")[0], up_key)
        if up is None:
            problems.append(f"input {name} {up_key} is gone")
    return problems


def _entries(store: RunStore) -> Iterator[tuple[str, str, Entry | None, str]]:
    """(stage, key, entry or None, why it cannot be opened) of every entry folder, read from the filesystem so
    that one unreadable attrs file does not hide the others."""
    import zarr

    for stage in STAGES:
        d = store.path / stage
        for k in sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []:
            try:
                g = zarr.open_group(d / k, mode="r+")
                e = Entry(store, g)
                _ = (e.stage, e.key, e.params, e.inputs, e.status)  # every attr verify and the stages read
                yield stage, k, e, ""
            except Exception as exc:  # noqa: BLE001 - corrupt zarr.json or missing attrs
                yield stage, k, None, f"attrs unreadable ({_short(exc)})"


def verify(store: RunStore) -> Iterator[Finding]:
    """One Finding per entry: complete entries are checked, partial ones reported with their progress."""
    for stage, key, e, why in _entries(store):
        if e is None:
            yield Finding(stage, key, False, why)
            continue
        try:
            if e.status != "complete":
                prog = e.progress()
                state = "being written" if e.is_busy() else "abandoned (rerun its command to resume, or gc it)"
                yield Finding(stage, key, True,
                              f"partial {prog[0]}/{prog[1]}, {state}" if prog else f"partial, {state}")
                continue
            problems = _check_entry(store, e)
        except Exception as exc:  # noqa: BLE001 - whatever else is damaged: a finding, and on to the next
            problems = [f"unreadable ({_short(exc)})"]
        yield Finding(stage, key, not problems, "; ".join(problems) or "ok")


def repair(store: RunStore, findings: list[Finding]) -> list[str]:
    """Remove every entry with a failed finding and every entry computed from one of them (nobody may be
    writing them); returns the commands that recompute the run's current results that went with them."""
    gone = {(f.stage, f.key) for f in findings if not f.ok}
    entries = [(stage, key, e) for stage, key, e, _ in _entries(store) if e is not None]
    grew = True
    while grew:  # dependents, transitively
        grew = False
        for stage, key, e in entries:
            if (stage, key) not in gone and any((n.split("@")[0], k) in gone for n, k in e.inputs.items()):
                gone.add((stage, key))
                grew = True
    current = store.current_keys
    commands = _restoring(store, {(s, k): e for s, k, e in entries}, gone, current)
    with store.locked():
        for stage, key in gone:
            shutil.rmtree(store.path / stage / key, ignore_errors=True)
        store.reload()
    return commands


def _restoring(store: RunStore, by_key: dict, gone: set, current: dict) -> list[str]:
    """The lines that remake the removed current entries and the removed entries they read (fuse's infer-diff
    maps), in pipeline order, each with the params it had (an entry whose attrs are unreadable: the bare line)."""
    want: list[tuple[str, str]] = [(s, current[s]) for s in STAGES if (s, current.get(s)) in gone]
    i = 0
    while i < len(want):  # the removed entries a removed current one was computed from
        e = by_key.get(want[i])
        for name, k in (_inputs(e) or {}).items():
            up = (name.split("@")[0], k)
            if up in gone and up not in want:
                want.append(up)
        i += 1
    lines: list[str] = []
    for stage in STAGES:
        groups: dict[str, list[int]] = {}  # infer-diff entries differing only in c: one line
        for s, k in want:
            if s != stage:
                continue
            e, params = by_key.get((s, k)), None
            try:
                params = dict(e.params) if e is not None else None
            except Exception:  # noqa: BLE001 - the damage verify found may be these very attrs
                params = None
            if params is None:
                line = command(stage, store.name)
            elif stage == "infer_diff":
                c = params.pop("c")
                groups.setdefault(json.dumps(params, sort_keys=True), []).append(c)
                continue
            else:
                line = entry_command(e)
            if line not in lines:
                lines.append(line)
        lines += [command("infer_diff", store.name, json.loads(q), merge_c=cs) for q, cs in groups.items()]
    return lines


def _inputs(e) -> dict | None:
    try:
        return dict(e.inputs) if e is not None else None
    except Exception:  # noqa: BLE001
        return None


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
