"""`drdc report`: per-category metric tables in the terminal, CSV and JSON; optionally pictures (`--plots`)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .app import app, guarded, out
from .commands import text
from .options import OverwriteOpt, QuietOpt, RunOpt

if TYPE_CHECKING:
    from stages.store.cache import RunStore


def render(table: list[dict], entries: list, title: str) -> Table:
    from stages.apps import report as rep

    t = Table(title=title, title_justify="left", header_style="bold")
    t.add_column("Category", style="bold")
    multi = len(entries) > 1
    # Side by side, the paper's three headline metrics per variant keep the table readable; CSV/JSON have all.
    shown = rep.HEADLINE if multi else rep.ORDER
    cols = [c for c in table[0] if c != "category" and c.rpartition("/")[2] in shown]
    for c in cols:
        variant, _, metric = c.rpartition("/")
        head = rep.LABELS[metric] + (f"\n[dim]{variant}[/]" if multi else "")
        t.add_column(head, justify="right")
    for r in table:
        if r["category"] == "mean":
            t.add_section()
        kind = rep.is_kind_row(r)  # a defect folder's row, under its category's
        name = "Mean" if r["category"] == "mean" else (
            f"[dim]  {r['category'].partition(rep.KIND_SEP)[2]}[/]" if kind else r["category"])
        t.add_row(name, *[("-" if r[c] is None else f"{100 * r[c]:.1f}") if not kind or r[c] is None
                          else f"[dim]{100 * r[c]:.1f}[/]" for c in cols])
    return t


def print_report(store: RunStore, variants: list[str] | None = None) -> list[dict]:
    from stages.apps import report as rep

    entries = rep.variants(store, variants)
    table = rep.rows(entries)
    val, kinds = rep.rows(entries, "val_metrics"), rep.by_kind_rows(entries)
    if val:
        out.print(render(val + kinds, entries, f"{store.name}: VALIDATION (held-out normals + synthetic defects, "
                                                "what settings are chosen on), in %"))
    out.print(render(table, entries, f"{store.name}: TEST metrics in % (categories without masks: pixel metrics '-'; "
                                    "indented: each defect folder against the category's good images)"))
    if len(entries) > 1:
        out.print("[dim]" + "; ".join(f"{tag} = score {e.key}" for tag, e in zip(rep.labels(entries), entries)) + "[/]",
                  soft_wrap=True)
    note = rep.base_only_note(store, entries)
    if note:
        out.print(f"[yellow]note:[/] {escape(text(note))}", soft_wrap=True)
    return table


@app.command(rich_help_panel="Results")
@guarded
def report(
    run: RunOpt,
    csv: Annotated[Optional[Path], typer.Option(help="Also write the table as CSV.")] = None,
    json: Annotated[Optional[Path], typer.Option(help="Also write the table and its settings as JSON.")] = None,
    per_image: Annotated[Optional[Path], typer.Option(help="Write every test image's score as CSV.")] = None,
    variant: Annotated[Optional[list[str]], typer.Option(help="Score entry key (prefix) to show; repeat for side-by-side columns. Default: the current one.")] = None,
    plots: Annotated[Optional[Path], typer.Option(help="Write per-category PNGs here: ROC curves, score histograms, worst false positives/negatives (and index.html).")] = None,
    worst: Annotated[int, typer.Option(help="With --plots / --html: images per side of the worst-cases grid.")] = 3,
    html: Annotated[Optional[Path], typer.Option(help="Write one self-contained HTML file: tables (validation and test; base only and DRDC unless --variant), ROC curves, histograms, worst cases, images embedded.")] = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Per-category and mean metrics of scored heatmaps, as in the paper's Tables 2/3."""
    from stages.apps import report as rep
    from stages.apps.outputs import Outputs
    from stages.store.cache import RunStore

    store = RunStore(run)
    entries = rep.variants(store, variant)
    outs = Outputs(overwrite)  # every file claimed before anything is written (stages.apps.outputs)
    for path, option in ((csv, "csv"), (json, "json"), (per_image, "per_image"), (html, "html")):
        if path is not None:
            outs.claim(path, option)
    planned = None
    if plots:
        from stages.apps.plots import plan, prepare  # matplotlib loads only when pictures are asked for

        prepare(plots, worst)
        planned = plan(entries, plots, outs=outs)
    table = print_report(store, variant)
    if csv:
        rep.write_csv(rep.with_validation(table, rep.rows(entries, "val_metrics"), rep.by_kind_rows(entries)), csv,
                      outs)
        out.print(f"wrote {csv}")
    if json:
        rep.write_json(table, entries, json, outs)
        out.print(f"wrote {json}")
    if per_image:
        n = rep.per_image(store, entries[0], per_image, outs)
        out.print(f"wrote {per_image} ({n} images)")
    if html:
        from stages.apps.html_report import write_html

        out.print(f"wrote {write_html(store, html, variant, worst, progress=not quiet, outs=outs)}")
    if plots:
        from stages.apps.plots import write_plots

        written = write_plots(store, entries, plots, k=worst, progress=not quiet, outs=outs, planned=planned)
        out.print(f"wrote {len(written)} files to {plots}: " + ", ".join(p.name for p in written), soft_wrap=True)
