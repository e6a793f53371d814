"""`drdc make-data` (the built-in synthetic dataset) and `drdc demo` (every stage on it, cpu preset)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from stages.data.choices import SyntheticSpec  # its settings: torch- and numpy-free

from .app import app, err, guarded, out, report_stage
from .generate import settings_options
from .options import DeviceOpt, OverwriteOpt, QuietOpt
from .predict_cmd import run_predict
from .workflow import run_and_print

if TYPE_CHECKING:
    from stages.store.cache import RunStore


@app.command("make-data", rich_help_panel="Data")
@guarded
@settings_options(SyntheticSpec, exclude=("categories",), show_defaults=True)
def make_data(
    given: dict,
    dest: Annotated[Path, typer.Argument(help="Folder to write the dataset into (MVTec-AD layout).")],
    quiet: QuietOpt = False,
) -> None:
    """Write the built-in synthetic multi-category dataset (textures and objects, four defect kinds, exact masks)."""
    from stages.data import synthetic

    spec = SyntheticSpec(**given)
    synthetic.make_dataset(dest, spec, progress=not quiet)
    out.print(f"[green]✓[/] wrote {len(spec.categories)} categories ({', '.join(spec.categories)}) to {dest}")


@app.command(rich_help_panel="Data")
@guarded
@settings_options(SyntheticSpec, only=("size", "n_train", "n_test_good", "n_test_defect"), show_defaults=True)
def demo(
    given: dict,
    dest: Annotated[Path, typer.Option("--out", help="Folder for the demo's data and run store; reruns reuse it.")] = Path("drdc-demo"),
    epochs: Annotated[Optional[int], typer.Option(help="train-base epochs (default: the cpu preset's 0: with its Mahalanobis base map, training the transformer adds nothing measurable).")] = None,
    diff_steps: Annotated[int, typer.Option(help="train-diff steps (fewer than the cpu preset's 2000; at 150 the diffusion maps were below chance, at 400 above it on every category).")] = 400,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Generate the synthetic dataset, run every stage on it with the cpu preset, print base-only vs DRDC."""
    from stages.apps.outputs import Outputs
    from stages.apps.predict.outputs import RESULTS
    from stages.data import synthetic
    from stages.store.cache import RunStore

    t0 = time.perf_counter()
    for name in RESULTS:  # the predictions it ends with: a file in the way is named before any work
        Outputs(overwrite).claim(dest / name, "out")
    progress = not quiet
    data, run = dest / "data", dest / "run.zarr"
    spec = SyntheticSpec(**given)
    if synthetic.is_complete(data, spec):
        out.print(f"[green]✓[/] synthetic data in {data} [dim](cached)[/]")
    else:
        synthetic.make_dataset(data, spec, progress=progress)
        out.print(f"[green]✓[/] synthetic data: {', '.join(spec.categories)} in {data}")
    store = RunStore(run, create=True)
    run_and_print(store, data, "cpu", device, progress, base_epochs=epochs, diff_steps=diff_steps)
    pictures = demo_pictures(store, dest, device, progress, overwrite)
    out.print(f"demo finished in {time.perf_counter() - t0:.0f} s; run store: {run} "
              f"(inspect with `drdc cache ls --run {run}`)")
    out.print(f"[bold]pictures:[/] {pictures} (input | base heatmap | diffusion heatmap | fused overlay | ground "
              f"truth); predict your own images with `drdc predict --run {run} IMAGE... --out DIR`", soft_wrap=True)


def demo_pictures(store: RunStore, dest: Path, device: str, progress: bool, overwrite: bool = False) -> Path:
    """Calibrate thresholds on the held-out normal images (with a pixel threshold), then `predict` one normal
    and one defective test image per category into <dest>/pictures/."""
    from stages.apps import calibrate
    from stages.apps.predict.predictor import Predictor

    index = store.current("index")
    root = Path(index.params["root"])
    chosen: list[Path] = []
    for cat in index.attrs["categories"]:
        tests = [r for r in index.attrs["records"] if r["category"] == cat and r["split"] == "test"]
        for want in (0, 1):
            r = next((r for r in tests if r["label"] == want), None)
            if r is not None:
                chosen.append(root / r["path"])
    pred = Predictor(store, device, show_diffusion=True)  # the diffusion map pictured even when not fused
    result, th = calibrate.run(store, pred, fpr=0.01, pixel=True, progress=progress)
    report_stage(result)
    for w in th.warnings:
        err.print(f"[yellow]note:[/] {w}", soft_wrap=True)
    run_predict(store, chosen, dest, device=device, progress=progress, pred=pred, overwrite=overwrite)
    return dest / "pictures"
