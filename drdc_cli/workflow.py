"""`drdc run`: every stage in order with one preset, reusing whatever the run store already holds."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from stages.pipeline.params import TuneParams

from .app import app, guarded, report_stage
from .options import DeviceOpt, PresetOpt, QuietOpt
from .pipeline import preset_of
from .report_cmd import print_report
from .tune_cmd import show_ranking

if TYPE_CHECKING:
    from stages.store.cache import RunStore


def run_and_print(store: RunStore, data: Path, preset: str, device: str, progress: bool,
                  base_epochs: int | None = None, diff_steps: int | None = None, image_size: int | None = None) -> None:
    """stages.pipeline.workflow.run_all, each stage's result and the tune ranking printed, then the report."""
    from stages.pipeline import workflow

    keys = workflow.run_all(store, data, preset, device, progress, report_stage, show_ranking(TuneParams.objective),
                            base_epochs, diff_steps, image_size)
    print_report(store, keys)


@app.command("run", rich_help_panel="Stages")
@guarded
def run_cmd(
    data: Annotated[Optional[Path], typer.Option(help="Dataset root (MVTec-AD, BTAD, VisA or folder layout, detected).")] = None,
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
    from stages.store.cache import RunStore

    store = RunStore(run, create=True)
    run_and_print(store, data, preset_of(store, preset), device, not quiet, base_epochs, diff_steps)
