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
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from stages.store import integrity
from stages.store.cache import Entry, RunStore
from stages.store.discard import discard
from stages.config.registry import STAGES
from stages.errors import Step

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
    missing = integrity.arrays_problem(e)  # a recorded array gone, unreadable metadata, a missing or cut chunk
    if missing:
        problems.append(missing)
    for name in integrity.array_names(e) if not missing else []:
        bad = integrity.chunk_problem(e.raw_array(name), name, e.path / name)  # every chunk's checksum
        if bad:
            problems.append(bad)
    files = e.path / "files"
    cut = set()
    for f in sorted(files.glob("*.pt")) if files.is_dir() else []:
        bad = integrity.file_problem(f)  # every zip member's CRC
        if bad:
            cut.add(f.name)
            problems.append(bad.replace(" is damaged", " does not load", 1) if "is damaged" in bad else bad)
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
    problems += [f"{f} is missing" for f in integrity.required_files(e)
                 if f not in e.missing_files() and not (files / f).is_file()]
    for f in sorted(files.glob("*.pt")) if files.is_dir() else []:
        if f.name in cut:
            continue
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
        up, _ = store.slot(name.split("@")[0], up_key)
        if up is None:
            problems.append(f"input {name} {up_key} is gone or damaged")
    return problems


def _entries(store: RunStore) -> Iterator[tuple[str, str, Entry | None, str]]:
    """(stage, key, entry or None, why it cannot be opened) of every entry folder, read from the filesystem so
    that one unreadable attrs file does not hide the others."""
    for stage, key, e, problem in store.slots():
        yield stage, key, e, "" if e is not None else f"attrs unreadable ({problem})"


def verify(store: RunStore) -> Iterator[Finding]:
    """One Finding per entry: complete entries are checked, partial ones reported with their progress; first a
    finding for the store's own attributes when they are damaged."""
    if store.root_problem:
        yield Finding("run", "zarr.json", False, store.root_problem)
    else:
        for stage, key in store.current_keys.items():
            e, problem = store.slot(stage, key)
            if e is None and problem is None:
                yield Finding("run", "zarr.json", False, f"the current {stage} {key} is not in the store")
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
    writing them); returns the steps that recompute the run's current results that went with them."""
    gone = {(f.stage, f.key) for f in findings if not f.ok and f.stage != "run"}
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
    store.must_write("repairing it must write to it")
    with store.locked():
        for stage, key in gone:
            discard(store.path / stage / key)
        if any(f.stage == "run" and not f.ok for f in findings):
            _mend_root(store)
        store.reload()
    return commands


def _mend_root(store: RunStore) -> None:
    """Rewrite a damaged zarr.json's attributes: the schema; each stage's current entry kept when it is a complete
    entry of the store, else its newest complete one; the preset and data root when sound (the preset else
    unset: commands then use the default, and every rerun line spells its options out)."""
    from stages.store.cache import SCHEMA_VERSION, is_key, root_problem
    from stages.config.presets import PRESETS

    old = dict(store.root.attrs)
    cur = old.get("current") if isinstance(old.get("current"), dict) else {}
    complete: dict[str, list[Entry]] = {}
    for e in store.entries():
        if e.is_complete:
            complete.setdefault(e.stage, []).append(e)
    current = {}
    for stage, es in complete.items():  # (entries removed by this repair are gone from `complete` already)
        keep = cur.get(stage)
        current[stage] = keep if is_key(keep) and any(e.key == keep for e in es) else es[-1].key
    attrs = {"drdc_schema": SCHEMA_VERSION, "current": current}
    if old.get("preset") not in PRESETS:
        attrs["preset"] = None
    if not isinstance(old.get("data_root", ""), str):
        attrs["data_root"] = None
    store.root.attrs.update({k: v for k, v in attrs.items() if v is not None})
    for k in [k for k, v in attrs.items() if v is None and k in store.root.attrs]:
        del store.root.attrs[k]
    store.root_problem = root_problem(dict(store.root.attrs))


def _restoring(store: RunStore, by_key: dict, gone: set, current: dict) -> list[Step]:
    """The steps that remake the removed current entries and the removed entries they read (fuse's infer-diff
    maps), in pipeline order, each with the params it had (an entry whose attrs are unreadable: the bare step)."""
    want: list[tuple[str, str]] = [(s, current[s]) for s in STAGES if (s, current.get(s)) in gone]
    i = 0
    while i < len(want):  # the removed entries a removed current one was computed from
        e = by_key.get(want[i])
        for name, k in (_inputs(e) or {}).items():
            up = (name.split("@")[0], k)
            if up in gone and up not in want:
                want.append(up)
        i += 1
    lines: list[Step] = []
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
                line = Step(stage, store.name)
            elif stage == "infer_diff":
                c = params.pop("c")
                groups.setdefault(json.dumps(params, sort_keys=True), []).append(c)
                continue
            else:
                line = e.step()
            if line not in lines:
                lines.append(line)
        lines += [Step("infer_diff", store.name, json.loads(q), merge_c=tuple(cs)) for q, cs in groups.items()]
    return lines


def _inputs(e) -> dict | None:
    try:
        return dict(e.inputs) if e is not None else None
    except Exception:  # noqa: BLE001
        return None


def reachable(store: RunStore) -> set[str]:
    """Paths of the current entries and of everything they were computed from."""
    keep: set[str] = set()
    todo = [store.slot(s, k)[0] for s, k in store.current_keys.items()]
    while todo:
        e = todo.pop()
        if e is None or str(e.path) in keep:
            continue
        keep.add(str(e.path))
        todo.extend(store.slot(name.split("@")[0], k)[0] for name, k in e.inputs.items())
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


def remove(store: RunStore, entries: list) -> None:
    """Remove entries (Entry objects or entry folders)."""
    store.must_write("removing entries must write to it")
    with store.locked():
        for e in entries:
            discard(e.path if isinstance(e, Entry) else e)
        store.reload()
