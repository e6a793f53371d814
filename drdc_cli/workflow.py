"""`drdc run`: every stage in order with one preset, reusing whatever the run store already holds."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stages import extract, fuse, index, infer_base, infer_diff, score, train_base, train_diff, tune
from stages.cache import RunStore
from stages.presets import build

from .app import app, guarded, report_stage
from .pipeline import DeviceOpt, PresetOpt, QuietOpt, preset_of
from .report import print_report
from .tune_cmd import tune_and_apply


def run_all(store: RunStore, data: Path, preset: str, device: str, progress: bool,
            base_epochs: int | None = None, diff_steps: int | None = None, image_size: int | None = None) -> None:
    """index -> extract -> train-base -> infer-base -> train-diff -> infer-diff -> fuse -> score (base and fused)
    -> (all presets but paper) tune on validation, fuse + score the chosen settings -> report with base-only,
    the paper's DRDC and the validation-chosen fusion side by side."""
    store.set_attr(preset=preset)
    report_stage(index.run(store, build(index.IndexParams, "index", preset, root=str(data), image_size=image_size),
                           progress))
    report_stage(extract.run(store, build(extract.ExtractParams, "extract", preset), device=device, progress=progress))
    report_stage(train_base.run(store, build(train_base.TrainBaseParams, "train_base", preset, epochs=base_epochs),
                                device=device, progress=progress))
    report_stage(infer_base.run(store, build(infer_base.InferBaseParams, "infer_base", preset), device=device,
                                progress=progress))
    base_score = score.run(store, score.ScoreParams(source="base"), progress=progress)
    report_stage(base_score)
    report_stage(train_diff.run(store, build(train_diff.TrainDiffParams, "train_diff", preset, steps=diff_steps),
                                device=device, progress=progress))
    diff_params = build(infer_diff.InferDiffParams, "infer_diff", preset)
    report_stage(infer_diff.run(store, diff_params, device=device, progress=progress))
    report_stage(fuse.run(store, fuse.FuseParams(c=diff_params.c, t=diff_params.t, l=diff_params.l), progress))
    fused_score = score.run(store, score.ScoreParams(source="fuse"), progress=progress)
    report_stage(fused_score)
    keys = [base_score.key, fused_score.key]
    if preset != "paper":  # the paper preset keeps the paper's fusion; others end with what validation chose
        keys.append(tune_and_apply(store, tune.TuneParams(), progress).key)
    print_report(store, keys)


@app.command("run", rich_help_panel="Stages")
@guarded
def run_cmd(
    data: Annotated[Optional[Path], typer.Option(help="Dataset root (MVTec-AD or BTAD layout).")] = None,
    run: Annotated[Optional[Path], typer.Option("--run", "-r", help="Run store: a .zarr directory holding every stage's results.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="A run file (TOML, as `drdc config` writes): every stage's options; instead of --data / --preset.")] = None,
    preset: PresetOpt = None,
    base_epochs: Annotated[Optional[int], typer.Option(help="Override the preset's train-base epochs.")] = None,
    diff_steps: Annotated[Optional[int], typer.Option(help="Override the preset's train-diff steps.")] = None,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Run every stage in order (base model, diffusion refinement, fusion, scores, report); cached stages are reused."""
    from stages.errors import ConfigError

    if config is not None:
        if data is not None or preset is not None or base_epochs is not None or diff_steps is not None:
            raise ConfigError("--config holds the data, preset and every stage's options; give it alone (with "
                              "--run, --device, -q)")
        from .runfile import run_file

        run_file(config, run, device, quiet)
        return
    if data is None or run is None:
        raise ConfigError("--data and --run are needed (or --config FILE)")
    store = RunStore(run, create=True)
    run_all(store, data, preset_of(store, preset), device, not quiet, base_epochs, diff_steps)
