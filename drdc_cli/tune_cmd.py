"""`drdc tune`: choose the fusion settings on the validation images (label-free), make the best one current."""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Callable

import typer
from rich.table import Table

from stages.pipeline.params import TuneParams  # its settings, torch-free; the stage loads when the command runs

from .app import app, guarded, out, report_stage
from .generate import settings_options
from .options import QuietOpt, RunOpt

if TYPE_CHECKING:
    from stages.pipeline.params import FuseParams
    from stages.pipeline.runtime import StageResult


def render(trials: list[dict], objective: str, top: int) -> Table:
    t = Table(title=f"validation (synthetic defects), best {top} of {len(trials)} trials by {objective}, in %",
              title_justify="left", header_style="bold")
    for col in ("#", "maps", "norm", "gamma", "fusion", "m", "t", "c", "l", "image γ", "I-AUROC", "P-AUROC", "AUPRO",
                "mean"):
        t.add_column(col, justify="right")
    kinds = sorted(trials[0]["by_kind"]) if trials else []
    for k in kinds:
        t.add_column(f"{objective}\n[dim]{k}[/]", justify="right")
    ranked = sorted(trials, key=lambda r: -r["metrics"][objective])[:top]
    fmt = lambda v: ",".join(map(str, v)) or "-"  # noqa: E731
    for i, r in enumerate(ranked, 1):
        q, m = r["settings"], r["metrics"]
        maps = "-" if q["gamma"] == 0 else f"{q.get('init', 'paper')}/{q.get('distance', 'pixel')}"
        fusion = q.get("fusion", "add") + (f" {q['gate']:g}" if q.get("gate") else "")
        image = "-" if q.get("image_gamma") is None else f"{q['image_gamma']:g}"
        t.add_row(str(i), maps, q["norm"], f"{q['gamma']:g}", fusion, str(q["filter"]), fmt(q["t"]), fmt(q["c"]),
                  fmt(q["l"]), image,
                  *[f"{100 * m[k]:.1f}" for k in ("i_auroc", "p_auroc", "p_aupro", "mean")],
                  *[f"{100 * r['by_kind'][k][objective]:.1f}" if k in r["by_kind"] else "-" for k in kinds])
    return t


def show_ranking(objective: str, top: int = 10) -> Callable[[list[dict], StageResult, FuseParams], None]:
    """What stages.pipeline.workflow calls between the search and the fusion: print the validation ranking and
    the settings that become current."""
    def show(trials: list[dict], res: StageResult, best: FuseParams) -> None:
        out.print(render(trials, objective, top))
        out.print(f"[bold]current fusion chosen on validation[/] ({objective}, tune {res.key}): "
                  f"maps={best.init or 'paper'}/{best.distance} norm={best.norm} "
                  f"gamma={best.gamma} fusion={best.fusion}" + (f" gate={best.gate}" if best.fusion == "gated" else "")
                  + f" m={best.filter} t={list(best.t)} c={list(best.c)} l={list(best.l)}"
                  + (f" image-gamma={best.image_gamma}" if best.image_gamma is not None else ""),
                  soft_wrap=True)
        out.print(why(trials, objective), soft_wrap=True)
    return show


def why(trials: list[dict], objective: str) -> str:
    """One line: what tune chose and why, in the validation objective's terms."""
    from stages.pipeline.tune import rationale

    r = rationale(trials, objective)
    pct = lambda v: "not tried" if v is None else f"{100 * v:.1f}"  # noqa: E731
    if r["base_only"] is not None and r["chosen"] <= r["base_only"]:
        verdict = "base only won"
    elif r["diffusion_only"] is not None and r["chosen"] <= r["diffusion_only"]:
        verdict = "the diffusion map alone won"
    else:
        verdict = "the diffusion refinement added to the base map"
    return (f"why: on validation (synthetic defects), {objective} {pct(r['chosen'])} for the chosen fusion, "
            f"{pct(r['base_only'])} for the base map alone, {pct(r['diffusion_only'])} for the diffusion map alone: "
            f"{verdict}")


@app.command(rich_help_panel="Results")
@guarded
@settings_options(TuneParams, show_defaults=True)
def tune(
    given: dict,
    run: RunOpt,
    top: Annotated[int, typer.Option(help="Trials shown in the ranking.")] = 10,
    quiet: QuietOpt = False,
) -> None:
    """Choose fusion settings (normalisation, gamma, m, t/c/l subsets) on the validation images only, from the
    cache (no UNet, no test label), then fuse and score the best: it becomes the run's current result."""
    from stages.pipeline import workflow
    from stages.store.cache import RunStore

    p = TuneParams(**given)
    workflow.tune_and_apply(RunStore(run), p, not quiet, report_stage, show_ranking(p.objective, top))
