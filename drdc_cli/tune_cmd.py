"""`drdc tune`: choose the fusion settings on the validation images (label-free), make the best one current."""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from stages import fuse as fuse_stage
from stages import score as score_stage
from stages import tune as tune_stage
from stages.cache import RunStore

from .app import app, guarded, out, report_stage
from .pipeline import QuietOpt, RunOpt, _ints, _numbers


def render(trials: list[dict], objective: str, top: int) -> Table:
    t = Table(title=f"validation (synthetic defects), best {top} of {len(trials)} trials by {objective}, in %",
              title_justify="left", header_style="bold")
    for col in ("#", "maps", "norm", "gamma", "m", "t", "c", "l", "I-AUROC", "P-AUROC", "AUPRO", "mean"):
        t.add_column(col, justify="right")
    kinds = sorted(trials[0]["by_kind"]) if trials else []
    for k in kinds:
        t.add_column(f"{objective}\n[dim]{k}[/]", justify="right")
    ranked = sorted(trials, key=lambda r: -r["metrics"][objective])[:top]
    fmt = lambda v: ",".join(map(str, v)) or "-"  # noqa: E731
    for i, r in enumerate(ranked, 1):
        q, m = r["settings"], r["metrics"]
        maps = "-" if q["gamma"] == 0 else f"{q.get('init', 'paper')}/{q.get('distance', 'pixel')}"
        t.add_row(str(i), maps, q["norm"], f"{q['gamma']:g}", str(q["filter"]), fmt(q["t"]), fmt(q["c"]), fmt(q["l"]),
                  *[f"{100 * m[k]:.1f}" for k in ("i_auroc", "p_auroc", "p_aupro", "mean")],
                  *[f"{100 * r['by_kind'][k][objective]:.1f}" if k in r["by_kind"] else "-" for k in kinds])
    return t


def tune_and_apply(store: RunStore, p: tune_stage.TuneParams, progress: bool, top: int = 10):
    """Search on validation, print the ranking, then fuse + score the best settings: they become current."""
    res, trials, best = tune_stage.run(store, p, progress=progress)
    report_stage(res)
    out.print(render(trials, p.objective, top))
    report_stage(fuse_stage.run(store, best, progress=progress))
    scored = score_stage.run(store, score_stage.ScoreParams(source="fuse", pool=p.pool), progress=progress)
    report_stage(scored)
    out.print(f"[bold]current fusion chosen on validation[/] ({p.objective}, tune {res.key}): "
              f"maps={best.init or 'paper'}/{best.distance} norm={best.norm} "
              f"gamma={best.gamma} m={best.filter} t={list(best.t)} c={list(best.c)} l={list(best.l)}",
              soft_wrap=True)
    return scored


@app.command(rich_help_panel="Results")
@guarded
def tune(
    run: RunOpt,
    objective: Annotated[str, typer.Option(help="What to maximise on validation: mean (of the three), p_auroc, p_aupro or i_auroc.")] = "mean",
    norms: Annotated[Optional[str], typer.Option(help="Normalisations to try, e.g. none,pixel,quantile.")] = None,
    gammas: Annotated[Optional[str], typer.Option(help="gamma values to try (0: base only, 1: diffusion only).")] = None,
    filters: Annotated[Optional[str], typer.Option(help="Mean filter sizes m to try (odd).")] = None,
    rounds: Annotated[int, typer.Option(help="Passes of the coordinate search.")] = 2,
    eval_size: Annotated[int, typer.Option(help="Trials are scored at this map size (the chosen one exactly).")] = 112,
    pool: Annotated[int, typer.Option(help="Average-pooling kernel before the max (image score).")] = 16,
    top: Annotated[int, typer.Option(help="Trials shown in the ranking.")] = 10,
    quiet: QuietOpt = False,
) -> None:
    """Choose fusion settings (normalisation, gamma, m, t/c/l subsets) on the validation images only, from the
    cache (no UNet, no test label), then fuse and score the best: it becomes the run's current result."""
    defaults = tune_stage.TuneParams()
    p = tune_stage.TuneParams(
        objective=objective, norms=tuple(v.strip() for v in norms.split(",") if v.strip()) if norms else defaults.norms,
        gammas=_numbers(gammas, "--gammas") or defaults.gammas, filters=_ints(filters, "--filters") or defaults.filters,
        rounds=rounds, eval_size=eval_size, pool=pool)
    tune_and_apply(RunStore(run), p, not quiet, top)
