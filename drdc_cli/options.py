"""The command-line options several commands share, declared once (flag, type, help, help panel), and the parsing
of their comma-separated values, which is drdc_cli.domains.numbers: the parser the domain check already ran."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stages.config.presets import DEFAULT_PRESET, PRESETS

from .domains import numbers

RunOpt = Annotated[Path, typer.Option("--run", "-r", help="Run store: a .zarr directory holding every stage's results.")]
DeviceOpt = Annotated[str, typer.Option(help="auto (cuda if available), cpu, cuda or cuda:N.")]
PresetOpt = Annotated[Optional[str], typer.Option(help=f"Defaults to fill: {', '.join(PRESETS)}. Default: the run's preset (set at index), else {DEFAULT_PRESET}.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace output files that exist (without it, drdc refuses to replace any file it did not write in this command).")]
MODEL_PANEL = "Model"
TRAIN_PANEL = "Training"
VAL_PANEL = "Validation split"

FUSION_PANEL = "Fusion (default: the run's current fuse settings)"
BaseOnlyOpt = Annotated[bool, typer.Option("--base-only", help="Skip the diffusion branch: score H_base alone.", rich_help_panel=FUSION_PANEL)]
WeightsOpt = Annotated[Optional[Path], typer.Option(help="Backbone weight file, if `drdc extract` was given one.")]


def ints(text: str | None, option: str) -> tuple[int, ...] | None:
    """'250,200,150' -> (250, 200, 150); None when the option was not given; a malformed list is one line naming
    the option."""
    return None if text is None else numbers(text, option, int)


