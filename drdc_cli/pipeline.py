"""Pipeline commands: index, extract, train-base, infer-base, train-diff, infer-diff, fuse, score.
Each stage's options are made from its Params' settings (drdc_cli.generate); options -> Params -> stage.run."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

# What --help and the option checks need, torch-free; each command imports its stage (torch, numpy) when it runs.
from stages.config.presets import DEFAULT_PRESET, build
from stages.pipeline.params import (ExtractParams, FuseParams, IndexParams, InferBaseParams, InferDiffParams,
                                    ScoreParams, TrainBaseParams, TrainDiffParams)

from .app import app, guarded, report_stage
from .generate import settings_options
from .options import DeviceOpt, PresetOpt, QuietOpt, RunOpt

if TYPE_CHECKING:
    from stages.store.cache import RunStore

def preset_of(store: RunStore, preset: str | None) -> str:
    return preset or store.attr("preset") or DEFAULT_PRESET


def _run(stage: str, cls: type, given: dict, run: Path, preset: str | None, quiet: bool, **kwargs: Any) -> None:
    """Build the stage's parameters (the run's preset, updated by the options given) and run the stage."""
    import importlib

    from stages.store.cache import RunStore

    store = RunStore(run)
    p = build(cls, stage, preset_of(store, preset), **given)
    report_stage(importlib.import_module(f"stages.pipeline.{stage}").run(store, p, progress=not quiet, **kwargs))


@app.command(rich_help_panel="Stages")
@guarded
@settings_options(IndexParams)
def index(
    given: dict,
    data: Annotated[Path, typer.Option(help="Dataset root in MVTec-AD, BTAD, VisA or folder layout (one or several categories).")],
    run: RunOpt,
    preset: PresetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Scan and validate a dataset; decode every image and mask once into the run store; make the validation split."""
    from stages.pipeline import index as index_stage
    from stages.store.cache import RunStore

    store = RunStore(run, create=True)
    name = preset_of(store, preset)
    p = build(IndexParams, "index", name, root=str(data), **given)
    store.set_attr(preset=name)
    report_stage(index_stage.run(store, p, progress=not quiet))


@app.command(rich_help_panel="Stages")
@guarded
@settings_options(ExtractParams)
def extract(
    given: dict,
    run: RunOpt,
    weights: Annotated[Optional[Path], typer.Option(help="Local weight file (.pth/.safetensors) for the backbone.")] = None,
    device: DeviceOpt = "auto",
    preset: PresetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Frozen backbone features F_in of every indexed image (stages 1-4 resized and concatenated)."""
    _run("extract", ExtractParams, given, run, preset, quiet, weights=weights, device=device)


def _trainer_like(command: str, stage: str, cls: type, doc: str) -> None:
    """Register a stage whose command has only its settings, --run, --device, --preset and -q."""
    def run_stage(given: dict, run: RunOpt, device: DeviceOpt = "auto", preset: PresetOpt = None,
                  quiet: QuietOpt = False) -> None:
        _run(stage, cls, given, run, preset, quiet, device=device)

    run_stage.__name__ = run_stage.__qualname__ = stage
    run_stage.__doc__ = doc
    app.command(command, rich_help_panel="Stages")(guarded(settings_options(cls)(run_stage)))


_trainer_like("train-base", "train_base", TrainBaseParams,
              "Train the UniAD reconstruction transformer on cached train features; resumes after a kill.")
_trainer_like("infer-base", "infer_base", InferBaseParams,
              "Base heatmaps H_base (Eq 2) of every validation and test image.")


@app.command(rich_help_panel="Stages")
@guarded
@settings_options(ScoreParams, show_defaults=True)
def score(given: dict, run: RunOpt, quiet: QuietOpt = False) -> None:
    """Image scores and per-category metrics (I-AUROC, P-AUROC, AUPRO, AP, F1-max)."""
    from stages.pipeline import score as score_stage
    from stages.store.cache import RunStore

    report_stage(score_stage.run(RunStore(run), ScoreParams(**given), progress=not quiet))


_trainer_like("train-diff", "train_diff", TrainDiffParams,
              "Train the conditional diffusion UNet (Eq 12) on train images; resumes after a kill.")


@app.command("infer-diff", rich_help_panel="Stages")
@guarded
@settings_options(InferDiffParams)
def infer_diff(
    given: dict,
    run: RunOpt,
    weights: Annotated[Optional[Path], typer.Option(help="Backbone weights file given to `drdc extract` (--distance feature).")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the UNet (pays off on long GPU runs).")] = False,  # noqa: A002
    device: DeviceOpt = "auto",
    preset: PresetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Diffusion heatmaps per (t, c, l) of every test image; cached (t-list, c) are not recomputed."""
    _run("infer_diff", InferDiffParams, given, run, preset, quiet, device=device, compile=compile, weights=weights)


@app.command(rich_help_panel="Stages")
@guarded
@settings_options(FuseParams, show_defaults=True, panels={"fusion": None})
def fuse(given: dict, run: RunOpt, quiet: QuietOpt = False) -> None:
    """Fuse cached base and diffusion heatmaps (Eq 17-19) on the CPU, without the UNet (--gamma 0: base only)."""
    from stages.pipeline import fuse as fuse_stage
    from stages.store.cache import RunStore

    report_stage(fuse_stage.run(RunStore(run), FuseParams(**given), progress=not quiet))
