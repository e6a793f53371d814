"""`drdc calibrate`: per-category thresholds from held-out normal images, stored in the run for `drdc predict`."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from stages.apps.choices import OVERRIDES
from stages.pipeline.params import FuseParams

from .app import app, err, guarded, out, report_stage
from .commands import text
from .generate import settings_options
from .options import BaseOnlyOpt, DeviceOpt, QuietOpt, RunOpt, WeightsOpt
from .predict_cmd import describe, overrides


@app.command(rich_help_panel="Results")
@guarded
@settings_options(FuseParams, only=OVERRIDES)
def calibrate(
    given: dict,
    run: RunOpt,
    fpr: Annotated[Optional[float], typer.Option(help="Image threshold with this false-positive rate on held-out normal images (default 0.01).")] = None,
    percentile: Annotated[Optional[float], typer.Option(help="Instead of --fpr: this percentile of the normal scores.")] = None,
    pixel: Annotated[bool, typer.Option("--pixel", help="Also a pixel threshold (same rule over normal pixels) for binary defect masks.")] = False,
    on_test_labels: Annotated[bool, typer.Option("--on-test-labels", help="F1-max thresholds chosen on the TEST labels: only to report F1-max, never for deployment.")] = False,
    base_only: BaseOnlyOpt = False,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Set per-category image thresholds (and --pixel thresholds) from normal images only; `drdc predict` uses them.

    The normal images are the train/good images train-base held out (--holdout); they are scored through the
    same pipeline as `drdc predict` (and cached, so another --fpr is instant). Use the same fusion options here
    as with predict.
    """
    from rich.table import Table

    from stages.apps import calibrate as cal
    from stages.apps.predict.predictor import Predictor
    from stages.store.cache import RunStore

    store = RunStore(run)
    if on_test_labels:
        if fpr is not None or percentile is not None:
            from stages.errors import ConfigError

            raise ConfigError("--on-test-labels picks F1-max thresholds; it takes no --fpr or --percentile")
        err.print("[bold red]WARNING: --on-test-labels chooses thresholds on the test set's labels. The numbers are "
                  "only good for reporting F1-max; they are flagged in the run and every `drdc predict` will warn.[/]",
                  soft_wrap=True)
    else:
        cal.quantile_of(fpr, percentile)  # option errors before any model loads
    pred = Predictor(store, device, overrides(given, base_only), base_only=base_only, weights=weights)
    for n in pred.notes:
        err.print(f"[yellow]note:[/] {text(n)}", soft_wrap=True)
    if on_test_labels:
        result, th = cal.run_on_test_labels(store, pred, pixel)
    else:
        result, th = cal.run(store, pred, fpr, percentile, pixel, progress=not quiet)
    report_stage(result)
    table = Table(title=f"thresholds ({describe(pred)})", title_justify="left", header_style="bold")
    for name in ("category", "image threshold", *(("pixel threshold",) if th.pixel is not None else ())):
        table.add_column(name, justify="left" if name == "category" else "right")
    for cat, v in th.image.items():
        table.add_row(cat, f"{v:.5g}", *((f"{th.pixel[cat]:.5g}" if cat in th.pixel else "-",)
                                          if th.pixel is not None else ()))
    table.add_section()
    table.add_row("[dim]any other[/]", f"{th.image_global:.5g}",
                  *((f"{th.pixel_global:.5g}" if th.pixel_global is not None else "-",) if th.pixel is not None else ()))
    out.print(table)
    for w in th.warnings:
        err.print(f"[bold yellow]warning:[/] {w}", soft_wrap=True)
    if th.outside is not None:
        out.print(f"an image whose distance to the nearest trained category exceeds {th.outside:.4g} is marked as "
                  "outside the run's categories", soft_wrap=True)
    out.print(f"stored in {store.name} (calibrate {th.key}); `drdc predict --run {store.name} IMAGE...` uses them",
              soft_wrap=True)
