"""`drdc cache ls | verify | gc`: what the run store holds, whether it is sound, and clearing what is not needed."""
from __future__ import annotations

import json

import typer
from rich.table import Table

from stages.config.registry import STAGES

from .app import cache_app, guarded, out
from .options import RunOpt


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _params(stage: str, p: dict) -> str:
    return " ".join(f"{k}={json.dumps(p[k])}" for k in STAGES[stage].shown if k in p and p[k] not in ("", [], None))


@cache_app.command("ls")
@guarded
def ls(
    run: RunOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the listing as JSON (the store, then one object per "
                                                       "entry with all its parameters) instead of a table."),
) -> None:
    """List every entry: stage, key, status (with progress when partial), parameters, size."""
    from stages.store.cache import RunStore

    store = RunStore(run)
    current = store.current_keys
    rows = []
    for stage, key, e, problem in store.slots():
        if e is None:  # its metadata is damaged: `drdc cache verify` says more, `--repair` removes it
            size = sum(f.stat().st_size for f in (store.path / stage / key).rglob("*") if f.is_file())
            rows.append({"stage": stage, "key": key, "current": current.get(stage) == key, "status": "damaged",
                         "problem": problem, "size_bytes": size})
            continue
        prog = e.progress() if e.status != "complete" else None
        rows.append({"stage": stage, "key": key, "current": current.get(stage) == key, "status": e.status,
                     "done": None if prog is None else prog[0], "total": None if prog is None else prog[1],
                     "running": e.status != "complete" and e.is_busy(), "params": e.params, "inputs": e.inputs,
                     "size_bytes": e.size_bytes()})
    if as_json:
        doc = {"store": store.name, "path": str(store.path), "current": current, "entries": rows}
        out.print(json.dumps(doc, indent=1), markup=False, highlight=False, emoji=False, soft_wrap=True)
        return
    t = Table(title=f"{store.name}", title_justify="left", header_style="bold")
    for c in ("stage", "key", "status", "key parameters", "size"):
        t.add_column(c, overflow="fold", justify="right" if c == "size" else "left")
    for r in rows:
        mark = " *" if r["current"] else ""
        status = r["status"]
        if status == "damaged":
            t.add_row(r["stage"].replace("_", "-"), r["key"] + mark, f"[red]damaged: {r['problem']}[/]", "",
                      _human(r["size_bytes"]))
            continue
        if status != "complete":
            status = (f"partial {r['done']}/{r['total']}" if r["total"] is not None else "partial") + (
                ", running" if r["running"] else "")
        t.add_row(r["stage"].replace("_", "-"), r["key"] + mark, status, _params(r["stage"], r["params"]),
                  _human(r["size_bytes"]))
    out.print(t)
    out.print("[dim]* current entry of its stage[/]")


@cache_app.command("verify")
@guarded
def verify_cmd(
    run: RunOpt,
    repair: bool = typer.Option(False, "--repair", help="Remove the damaged entries, then print the commands that "
                                                        "recompute them."),
) -> None:
    """Check every complete entry (shapes, done flags, chunks decode, no NaN/inf, checkpoints and required files,
    inputs exist); every fault is one row; exit 1 if anything is wrong (unless --repair mended it)."""
    from stages.errors import StoreError
    from stages.store.cache import RunStore
    from stages.store.integrity import repair_step
    from stages.store.verify import repair as repair_store
    from stages.store.verify import verify

    from .commands import line

    store = RunStore(run, mend=True)  # a damaged zarr.json is a finding (and --repair rewrites it)
    t = Table(title=f"verify {store.name}", title_justify="left", header_style="bold")
    for c in ("stage", "key", "result"):
        t.add_column(c, overflow="fold")
    findings = list(verify(store))
    for f in findings:
        t.add_row(f.stage.replace("_", "-"), f.key, f.what if f.ok else f"[red]{f.what}[/]")
    out.print(t)
    bad = sum(not f.ok for f in findings)
    if bad and repair:
        commands = repair_store(store, findings)
        out.print(f"removed {bad} damaged entries" + ("; recompute the current results with:" if commands else ""))
        for step in commands:
            out.print(f"  {line(step)}", soft_wrap=True)
        return
    if bad:
        raise StoreError(f"{bad} entries of {store.name} failed verification; ", repair_step(store.name),
                         " removes them and prints the commands that recompute them")
    out.print("[green]✓[/] every complete entry verified")


@cache_app.command("gc")
@guarded
def gc_cmd(
    run: RunOpt,
    partial: bool = typer.Option(False, "--partial", help="Remove partial entries nobody is writing."),
    stale: bool = typer.Option(False, "--stale", help="Remove complete entries the current results do not use."),
    key: list[str] = typer.Option([], "--key", help="Remove these entries (key or unique key prefix); repeatable."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
) -> None:
    """Free space: remove abandoned partial entries, stale entries, or named ones. Entries being written by
    another process are never removed."""
    from stages.errors import ConfigError
    from stages.store.cache import RunStore
    from stages.store.locks import is_locked
    from stages.store.discard import leftovers
    from stages.store.verify import collect, remove

    store = RunStore(run)
    if not (partial or stale or key):
        raise ConfigError("drdc cache gc: say what to remove: --partial, --stale and/or --key KEY")
    doomed = [(e.stage, e.key, e.path, e.status) for e in collect(store, partial, stale)]
    for k in key:  # damaged entries too: removing one is how its result is made again
        hits = [(s, kk) for s, kk, _, _ in store.slots() if kk.startswith(k)]
        if len(hits) != 1:
            raise ConfigError(f"--key: {k!r} matches {len(hits)} entries of {store.name} (see `drdc cache ls --run {store.name}`)")
        stage, full = hits[0]
        e, problem = store.slot(stage, full)
        path = store.path / stage / full
        if e.is_busy() if e is not None else is_locked(path / ".lock"):
            raise ConfigError(f"--key: {full} is being written by another process; not removed")
        doomed.append((stage, full, path, "damaged" if problem else e.status))
    doomed = list({str(p): (s, k, p, st) for s, k, p, st in doomed}.values())
    # --partial also takes what a kill left of a removal (hidden folders no entry lists)
    interrupted = [(p.parent.name, p.name, p, "an interrupted removal") for p in leftovers(store.path)] if partial else []
    if (doomed or interrupted) and not dry_run:
        store.must_write("removing entries must write to it")
    size = sum(f.stat().st_size for _, _, p, _ in doomed + interrupted for f in p.rglob("*") if f.is_file())
    for stage, k, _, status in doomed + interrupted:
        out.print(f"{'would remove' if dry_run else 'remove'} {stage.replace('_', '-')} {k} ({status})")
    if not dry_run:
        remove(store, [p for _, _, p, _ in doomed + interrupted])
    out.print(f"{'would free' if dry_run else 'freed'} {_human(size)} in {len(doomed) + len(interrupted)} entries")
