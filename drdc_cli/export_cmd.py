"""`drdc export`: the run's trained models as ONNX or TorchScript graphs, a manifest and a standalone example."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app, guarded, out
from .options import OverwriteOpt, QuietOpt, RunOpt


@app.command("export", rich_help_panel="Results")
@guarded
def export_cmd(
    run: RunOpt,
    dest: Annotated[Path, typer.Option("--out", "-o", help="Folder for the graphs, manifest.json and infer.py.")],
    format: Annotated[str, typer.Option(help="onnx (opset 18, dynamic batch) or torchscript.")] = "onnx",  # noqa: A002
    base_only: Annotated[bool, typer.Option("--base-only", help="Only the base graph (image -> H_base).")] = False,
    weights: Annotated[Optional[Path], typer.Option(help="Backbone weight file, if `drdc extract` was given one.")] = None,
    check: Annotated[int, typer.Option(help="Then run infer.py on this many of the run's test images and compare "
                                            "it with predict (0: no check).")] = 0,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export the run's models for deployment: what predict scores as one graph (drdc: image, category, masks,
    noise -> H_out), image -> H_base (base), the conditional UNet, a manifest (preprocessing, fusion and its
    statistics, how to draw the masks and noise, thresholds, keys) and infer.py, which needs only onnxruntime."""
    from stages.apps.export.folder import export
    from stages.store.cache import RunStore

    m = export(RunStore(run), dest, format, weights, base_only, progress=not quiet, overwrite=overwrite)
    out.print(f"[green]✓[/] export: {', '.join(m['graphs'].values())}, manifest.json, infer.py in {dest} "
              f"({m['format']}{', opset ' + str(m['opset']) if m['opset'] else ''}); try "
              f"`python {dest / 'infer.py'} IMAGE...`", soft_wrap=True)
    if check:
        from stages.apps.export.check import MAP_TOLERANCE, SCORE_TOLERANCE
        from stages.apps.export.check import check as check_export
        from stages.errors import DataError

        r = check_export(RunStore(run), dest, check, base_only, progress=not quiet)
        said = (f"infer.py on {r.images} test images ({', '.join(r.categories)}), {r.mode} mode: scores within "
                f"{r.score_error:.1e} of predict's (tolerance {SCORE_TOLERANCE:.0e}), maps within {r.map_error:.1e} "
                f"of their maximum (tolerance {MAP_TOLERANCE:.0e})")
        if not r.passed:
            raise DataError(f"export check failed: {said}")
        out.print(f"[green]✓[/] check: {said}", soft_wrap=True)
