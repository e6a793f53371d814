"""`drdc predict`: score new images with a run's trained models; a table, CSV/JSON and one picture per image."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from stages.errors import ConfigError, DataError, DrdcError

from stages.apps.choices import OVERRIDES
from stages.config.settings import flag_name, settings_of
from stages.pipeline.params import FuseParams

from . import flags
from .commands import text
from .app import app, err, guarded, out
from .generate import settings_options
from .options import BaseOnlyOpt, DeviceOpt, OverwriteOpt, QuietOpt, RunOpt, WeightsOpt

if TYPE_CHECKING:  # loaded when a command runs: they bring torch, and matplotlib only when pictures are drawn
    from stages.apps.predict.loop import Prediction
    from stages.apps.predict.predictor import Predictor
    from stages.store.cache import RunStore

MAX_ROWS = 40  # terminal rows; the CSV has all


def overrides(given: dict, base_only: bool = False) -> dict:
    """The fusion options given ({field: value}, settings_options(FuseParams, only=OVERRIDES)); with --base-only
    there is no fusion, so any of them would be silently dropped."""
    if base_only and given:
        flags = ", ".join(f"--{flag_name(n, s)}" for n, (_, s) in settings_of(FuseParams).items() if n in given)
        raise ConfigError(f"--base-only scores H_base alone, so {flags} would have no effect; give one or the other")
    return given


def describe(pred: Predictor) -> str:
    if pred.fusion is None:
        return "base heatmap H_base only"
    f = pred.fusion
    return (f"DRDC fusion from {f.source}: gamma {f.gamma}, m {f.filter}, t={_j(f.t)}, c={_j(f.c)}, l={_j(f.l)}"
            + ("" if f.spatio_temporal else ", spatio-temporal fusion off")
            + (", multi-scale base" if f.multiscale_base else "")
            + ("" if f.test_time_condition else ", test-time condition off"))


def _j(v) -> str:
    return ",".join(map(str, v))


def _table(rows: list[Prediction], shown: int, names: dict[Path, str], common: str) -> Table:
    t = Table(header_style="bold", title_justify="left", title=common, box=box.SIMPLE_HEAD)
    flagged = any(p.is_outside for p in rows[:shown])
    for name, just in (("image", "left"), ("category", "left"), ("score", "right"), ("threshold", "right"),
                       ("verdict", "left"), ("truth", "left"), *([("outside", "left")] if flagged else [])):
        t.add_column(name, justify=just, no_wrap=True, overflow="ellipsis" if name == "truth" else "fold")
    style = {"anomalous": "bold red", "normal": "green", "uncalibrated": "dim"}
    for p in rows[:shown]:
        t.add_row(names[p.path], p.category or "[dim]unknown[/]", f"{p.score:.5g}",
                  "-" if p.threshold is None else f"{p.threshold:.5g}", f"[{style[p.verdict]}]{p.verdict}[/]",
                  p.truth or "", *(["[bold yellow]yes[/]" if p.is_outside else ""] if flagged else []))
    return t


def outside_note(rows: list[Prediction]) -> str | None:
    """One warning line when images look like none of the run's categories (stages.apps.calibrate.outside_threshold)."""
    far = [p for p in rows if p.is_outside]
    if not far:
        return None
    return (f"{len(far)} of {len(rows)} images look like none of the run's categories (distance to the nearest "
            f"trained category above {far[0].outside_threshold:.4g}, marked 'outside'): their verdicts compare them "
            "with categories they are not; train a run that includes their kind")


def run_predict(store: RunStore, inputs: list[Path], dest: Path | None, category: str | None = None,
                fuse: dict | None = None, base_only: bool = False, pictures: bool = True,
                masks: bool = True, device: str = "auto", weights: Path | None = None,
                progress: bool = True, show: int = MAX_ROWS, pred: Predictor | None = None,
                full_size_masks: bool = False, overwrite: bool = False) -> list[Prediction]:
    """The predict command's body (also used by `drdc demo`, which passes its loaded `pred`). An input that cannot
    be scored (missing, not an image, empty, truncated, too large) is refused in one line and the others are
    scored; the command then exits 1 (with nothing to score: before any model loads)."""
    from stages.apps import calibrate as cal
    from stages.apps.outputs import Outputs
    from stages.apps.predict.loop import predict
    from stages.apps.predict.inputs import check_category, collect_images, display_names, picture_stems
    from stages.apps.predict.outputs import MASK, PICTURE, RESULTS, picture_writer, write_results
    from stages.apps.predict.predictor import Predictor

    fuse = fuse or {}
    refused: list[str] = []

    def refuse(path: Path, e: Exception) -> None:
        import sys

        from tqdm import tqdm

        refused.append(str(path))
        with tqdm.external_write_mode(file=sys.stderr):  # its own line, not inside the progress bar's
            said = flags.message(e) if isinstance(e, DrdcError) else str(e)
            err.print(f"[bold red]error:[/] {escape(said)}; skipped", soft_wrap=True)

    early: list[tuple[Path, Exception]] = []
    paths = collect_images(inputs, on_refused=lambda p, e: early.append((p, e)))  # before any model loads
    if not paths and len(early) == 1:
        raise early[0][1]
    for p, e in early:
        refuse(p, e)
    if not paths:
        raise DataError(f"none of the {len(early)} inputs holds an image that can be scored (each is named above)")
    check_category(store.current("index"), category)
    if dest is not None and dest.exists() and not dest.is_dir():
        raise ConfigError(f"{dest} exists and is not a folder", "out")
    outs = Outputs(overwrite)
    if dest is not None:  # before the models load: a file in the way is named at once
        for name in RESULTS:
            outs.claim(dest / name, "out")
    t0 = time.perf_counter()
    loaded = ""
    if pred is None:
        pred = Predictor(store, device, fuse, base_only=base_only, weights=weights)
        loaded = f"; models loaded in {time.perf_counter() - t0:.1f} s"
    thresholds, note = cal.current(store, pred)
    notes = [text(n) for n in pred.notes]  # the library's notes name options and steps: as the command line says them
    note = text(note) if note else None
    for n in notes:
        err.print(f"[yellow]note:[/] {n}", soft_wrap=True)
    if note:
        err.print(f"[bold red]{note}[/]" if thresholds is not None else f"[yellow]note:[/] {note}", soft_wrap=True)
    shown = dict(zip(paths, display_names(paths)))
    writer = None
    if dest is not None and pictures:  # every picture's (and mask's) name, claimed before any image is scored
        with_masks = masks and thresholds is not None and thresholds.pixel is not None
        names = {p: n for p, n in zip(paths, outs.unique(dest / "pictures", picture_stems(paths),
                                                         (PICTURE, MASK) if with_masks else (PICTURE,), "out"))}
        names = {p: n + PICTURE for p, n in names.items()}
        writer = picture_writer(dest / "pictures", names, shown, masks, full_size_masks, outs)
    t1 = time.perf_counter()
    rows = predict(pred, paths, thresholds, category, progress=progress, on_batch=writer, on_refused=refuse)
    if not rows:
        raise DataError(f"none of the {len(paths) + len(refused)} inputs could be scored (each is named above)")
    per_image = (time.perf_counter() - t1) / len(rows)
    common = "" if len(paths) == 1 else f"images under {os.path.commonpath([str(p.resolve().parent) for p in paths])}"
    out.print(_table(rows, show, shown, common))
    if len(rows) > show:
        out.print(f"[dim]... {len(rows) - show} more rows{' in the CSV' if dest else ' (pass --out DIR for a CSV)'}[/]")
    if (far := outside_note(rows)) is not None:
        err.print(f"[bold yellow]warning:[/] {far}", soft_wrap=True)
    out.print(f"{describe(pred)}; thresholds: {'none' if thresholds is None else thresholds.rule}", soft_wrap=True)
    scoring = sum(p.seconds for p in rows) / len(rows)
    out.print(f"{len(rows)} images in {per_image * len(rows):.1f} s: {scoring:.2f} s/image scoring"
              f"{f', {per_image - scoring:.2f} s/image pictures' if writer else ''} (device {pred.dev}{loaded})",
              soft_wrap=True)
    if dest is None:
        out.print("[dim]pass --out DIR for predictions.csv/.json and a picture per image[/]")
    else:
        meta = {"run": str(store.path), "settings": pred.settings(), "describe": describe(pred),
                "thresholds": None if thresholds is None else {"key": thresholds.key, "rule": thresholds.rule,
                                                               "on_test_labels": thresholds.on_test_labels},
                "notes": notes + ([note] if note else []), "seconds_per_image": per_image,
                "refused": refused}
        c, j = write_results(rows, dest, meta, outs)
        where = f"; pictures in {dest / 'pictures'}" if pictures else ""
        out.print(f"wrote {c} and {j}{where}", soft_wrap=True)
    if refused:
        err.print(f"[bold red]error:[/] {len(refused)} of the inputs could not be scored (named above); the others "
                  "were", soft_wrap=True)
        raise typer.Exit(1)
    return rows


@app.command("predict", rich_help_panel="Results")
@guarded
@settings_options(FuseParams, only=OVERRIDES)
def predict_cmd(
    given: dict,
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).", metavar="IMAGE_OR_FOLDER", show_default=False)],
    run: RunOpt,
    dest: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for predictions.csv/.json and pictures/.")] = None,
    category: Annotated[Optional[str], typer.Option(help="Category of every image (default: from an MVTec-like path <cat>/test/<defect>/x.png, else unknown).")] = None,
    base_only: BaseOnlyOpt = False,
    pictures: Annotated[bool, typer.Option("--pictures/--no-pictures", help="One PNG per image: input | base | diffusion | fused overlay.")] = True,
    masks: Annotated[bool, typer.Option("--masks/--no-masks", help="Binary defect mask PNGs (needs `drdc calibrate --pixel`).")] = True,
    full_size_masks: Annotated[bool, typer.Option("--full-size-masks", help="Masks at each file's own size and aspect (default: the run's image size).")] = False,
    weights: WeightsOpt = None,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Score new images with the run's trained models: table, CSV/JSON and a picture per image.

    Images of any size or mode are decoded and resized to the run's image size exactly as `drdc index` does.
    """
    from stages.store.cache import RunStore

    store = RunStore(run)
    run_predict(store, images, dest, category, overrides(given, base_only), base_only, pictures, masks,
                device, weights, progress=not quiet, full_size_masks=full_size_masks, overwrite=overwrite)
