"""`drdc cache ls`: what the run store holds."""
from __future__ import annotations

import json

from rich.table import Table

from stages.cache import RunStore
from stages.registry import STAGES

from .app import cache_app, guarded, out
from .pipeline import RunOpt


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
def ls(run: RunOpt) -> None:
    """List every entry: stage, key, status (with progress when partial), parameters, size."""
    store = RunStore(run)
    current = store.current_keys
    t = Table(title=f"{store.name}", title_justify="left", header_style="bold")
    for c in ("stage", "key", "status", "key parameters", "size"):
        t.add_column(c, overflow="fold", justify="right" if c == "size" else "left")
    for e in store.entries():
        status = e.status
        prog = e.progress()
        if status != "complete" and prog:
            status = f"partial {prog[0]}/{prog[1]}"
        mark = " *" if current.get(e.stage) == e.key else ""
        t.add_row(e.stage.replace("_", "-"), e.key + mark, status, _params(e.stage, e.params), _human(e.size_bytes()))
    out.print(t)
    out.print("[dim]* current entry of its stage[/]")
