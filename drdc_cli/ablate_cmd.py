"""`drdc ablate`: the paper's Table 5 from the run store, with the commands that fill the rows it cannot answer."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from stages.apps.choices import Selection  # its settings, torch-free; stages.apps.ablate loads when the command runs

from .app import app, guarded, out
from .commands import shown
from .generate import settings_options
from .options import OverwriteOpt, QuietOpt, RunOpt

SWITCHED = ("spatio_temporal", "multiscale_base", "test_time_condition", "image_gamma")  # Table 5's rows set these

if TYPE_CHECKING:
    from rich.table import Table

    from stages.apps import ablate as abl


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _mark(v: bool | None) -> str:
    return "" if v is None else ("✓" if v else "×")


def render(rows: list[abl.Row], title: str, split: str = "test") -> Table:
    """One table per split: the test split with each row's switches, or the validation images."""
    from rich.table import Table

    t = Table(title=title, title_justify="left", header_style="bold")
    t.add_column("variant", style="bold")
    if split == "test":
        t.add_column("MS STF\nMC TTC", justify="center")
        t.add_column("train/start\n/distance", justify="left")
    for name in ("I-AUROC", "P-AUROC", "AUPRO"):
        t.add_column(name, justify="right")
    for r in rows:
        v = r.variant
        ms = r.metrics if split == "test" else r.val_metrics
        m = ms.get("mean", {}) if ms else {}
        vals = [_pct(m.get(k)) for k in ("i_auroc", "p_auroc", "p_aupro")] if ms else ["[dim]-[/]"] * 3
        if split != "test":
            t.add_row(r.name, *vals)
            continue
        switches = "" if v is None else " ".join(_mark(x) for x in (v.multiscale_base, v.spatio_temporal,
                                                                      v.model_condition, v.test_time_condition))
        maps = "" if v is None else "/".join(x or "·" for x in (v.task, v.init, v.distance)) + (
            f" {v.fusion}" if v.fusion else "") + (f" image γ {v.image_gamma:g}" if v.image_gamma is not None else "")
        t.add_row(r.name, switches, maps, *vals)
    return t


def write_csv(rows: list[abl.Row], path: Path, outs) -> None:
    outs.write(path, lambda tmp: _write_csv(rows, tmp))


def _write_csv(rows: list[abl.Row], path: Path) -> None:
    from stages.method.metrics import METRIC_NAMES

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "multiscale_base", "spatio_temporal", "model_condition", "test_time_condition",
                    "task", "init", "distance", "category", *METRIC_NAMES])
        for r in rows:
            v = r.variant
            sw = [""] * 7 if v is None else [int(v.multiscale_base), int(v.spatio_temporal), int(v.model_condition),
                                             int(v.test_time_condition), v.task or "", v.init or "",
                                             v.distance or ""]
            if r.metrics is None:
                w.writerow([r.name, *sw, "", *[""] * len(METRIC_NAMES)])
                continue
            for prefix, ms in (("val:", r.val_metrics or {}), ("", r.metrics)):
                for cat, m in ms.items():
                    w.writerow([r.name, *sw, prefix + cat,
                                *["" if m[k] is None else f"{m[k]:.6f}" for k in METRIC_NAMES]])


def write_json(rows: list[abl.Row], path: Path, outs) -> None:
    doc = [{"variant": r.name, "switches": None if r.variant is None else {
        k: getattr(r.variant, k) for k in ("multiscale_base", "spatio_temporal", "model_condition",
                                           "test_time_condition", "task", "init", "distance", "fusion",
                                           "image_gamma")},
            "metrics": r.metrics, "validation_metrics": r.val_metrics, "fusion": r.fusion, "entries": r.entries,
            "commands": [shown(c) for c in r.commands]} for r in rows]
    outs.write_text(path, json.dumps(doc, indent=1))


@app.command(rich_help_panel="Results")
@guarded
@settings_options(Selection, exclude=SWITCHED, show_defaults=True, panels={"fusion": None})
def ablate(
    given: dict,
    run: RunOpt,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Per-category metrics of every row as CSV.")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Rows, switches, settings and commands as JSON.")] = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The paper's Table 5 (ablations) from cached heatmaps: fusion switches computed in memory, without the UNet;
    rows that need another diffusion model or other heatmaps name the commands that make them."""
    sel = Selection(**given)
    from stages.apps.outputs import Outputs

    outs = Outputs(overwrite)  # claimed before any work (stages.apps.outputs)
    for path, option in ((csv_path, "csv"), (json_path, "json")):
        if path is not None:
            outs.claim(path, option)
    from stages.apps import ablate as abl
    from stages.store.cache import RunStore

    store = RunStore(run)
    rows = abl.run(store, sel, progress=not quiet)
    if any(r.val_metrics for r in rows):
        out.print(render(rows, f"{store.name}: VALIDATION (held-out normals + synthetic defects), mean over "
                               "categories, in %", split="val"))
    out.print(render(rows, f"{store.name}: Table 5, TEST split, mean over categories, in %"))
    out.print("[dim]MS: multi-scale base heatmap, STF: spatio-temporal fusion, MC: model condition, "
              "TTC: test-time condition; train: train-diff --task, start: infer-diff --init, distance: pixel (Eq 16) "
              "or feature (·: the current UNet's task, --init and --distance)[/]",
              soft_wrap=True)
    missing = [r for r in rows if r.metrics is None]
    for r in missing:
        out.print(f"[yellow]{r.name}[/] needs:", soft_wrap=True)
        for step in r.commands:
            out.print(f"  {shown(step)}", soft_wrap=True)
    if csv_path:
        write_csv(rows, csv_path, outs)
        out.print(f"wrote {csv_path}")
    if json_path:
        write_json(rows, json_path, outs)
        out.print(f"wrote {json_path}")
