"""`drdc bound`: the paper's Table 1 (pixel AUROC of ground-truth masks down- and upsampled) for any dataset."""
from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from stages.apps.choices import BoundParams  # its settings: torch-free
from stages.errors import ConfigError

from .app import app, guarded, out
from .generate import settings_options
from .options import OverwriteOpt, QuietOpt

if TYPE_CHECKING:
    from rich.table import Table

    from stages.apps import bound as bnd


def render(table: list[dict], p: bnd.BoundParams, title: str) -> Table:
    from rich.table import Table

    from stages.apps import bound as bnd

    t = Table(title=title, title_justify="left", header_style="bold")
    t.add_column("Category", style="bold")
    t.add_column("Test images", justify="right")
    for s in p.scales:
        t.add_column(f"{bnd.column(s)}\n[dim]{p.image_size // s} px[/]", justify="right")
    for r in table:
        if r["category"] == "mean":
            t.add_section()
        t.add_row("Mean" if r["category"] == "mean" else r["category"], str(r["images"]),
                  *["-" if r[bnd.column(s)] is None else f"{100 * r[bnd.column(s)]:.2f}" for s in p.scales])
    return t


@app.command(rich_help_panel="Results")
@guarded
@settings_options(BoundParams, show_defaults=True)
def bound(
    given: dict,
    data: Annotated[Optional[Path], typer.Option(help="Dataset root (MVTec-AD, BTAD, VisA or folder layout) to read masks from.")] = None,
    run: Annotated[Optional[Path], typer.Option("--run", "-r", help="Or: use the masks already in this run store's index.")] = None,
    category: Annotated[Optional[str], typer.Option(help="Comma-separated subset of categories.")] = None,
    csv: Annotated[Optional[Path], typer.Option(help="Also write the table as CSV.")] = None,
    json: Annotated[Optional[Path], typer.Option(help="Also write the table and its settings as JSON.")] = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The paper's Table 1: pixel AUROC of the ground-truth masks after downscaling by 1/s and upsampling back."""
    from stages.apps.outputs import Outputs

    if (data is None) == (run is None):
        raise ConfigError("--data / --run: give exactly one (a dataset root, or a run store whose index to use)")
    from stages.apps import bound as bnd
    from stages.apps import report as rep
    from stages.store.cache import RunStore

    outs = Outputs(overwrite)  # claimed before any work (stages.apps.outputs)
    for path, option in ((csv, "csv"), (json, "json")):
        if path is not None:
            outs.claim(path, option)
    cats = tuple(c.strip() for c in category.split(",") if c.strip()) if category else None
    if run is not None:
        index = RunStore(run).current("index")
        size = index.params["image_size"]
        if given.get("image_size", size) != size:
            raise ConfigError(f"--image-size: the run's index is at {size} px (got {given['image_size']}); drop "
                              "--image-size or index the data again at that size")
        p = BoundParams(**{**given, "image_size": size})
        masks = bnd.masks_from_index(index, cats)
        source = f"{run} (index {index.key})"
    else:
        p = BoundParams(**given)
        masks = bnd.masks_from_data(data, p.image_size, cats, progress=not quiet)
        source = str(data)
    table = bnd.bound_table(masks, p, progress=not quiet)
    out.print(render(table, p, f"Pixel AUROC (%) of ground-truth masks at 1/s resolution, {p.image_size} px "
                               f"(down {p.down}, up {p.up}): {source}"))
    if csv:
        rep.write_csv(table, csv, outs)
        out.print(f"wrote {csv}")
    if json:
        rep.write_text(json, jsonlib.dumps({"source": source, "image_size": p.image_size, "scales": list(p.scales),
                                            "down": p.down, "up": p.up, "rows": table}, indent=1), outs)
        out.print(f"wrote {json}")
