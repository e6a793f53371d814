"""The command line that makes an entry with given params, every CLI-settable param spelled out.

A hint that says "rerun `drdc train-base --run R`" would train with the preset's defaults, not with the
options the removed or stale entry was made with; the line `command` prints makes the same key again (on the
same inputs), whatever the run's preset. tests/test_hints.py runs it for every entry of a run and checks that.
"""
from __future__ import annotations

import shlex
from typing import Any, Iterable

from stages.config.registry import STAGES

FLAGS: dict[str, dict[str, str]] = {  # entry param -> CLI flag, per stage
    "index": {"root": "--data", "layout": "--layout", "categories": "--categories", "image_size": "--image-size",
              "resize": "--resize", "val_fraction": "--val-fraction", "val_min": "--val-min", "val_defects": "--val-defects",
              "val_seed": "--val-seed", "val_kinds": "--val-kinds"},
    "extract": {"backbone": "--backbone", "feature_size": "--feature-size"},
    "train_base": {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "weight_decay": "--weight-decay",
                   "schedule": "--schedule", "lr_step": "--lr-step", "warmup_epochs": "--warmup-epochs",
                   "grad_clip": "--grad-clip", "holdout": "--holdout", "seed": "--seed", "hidden_dim": "--hidden-dim",
                   "dim_feedforward": "--ffn-dim", "nhead": "--heads", "num_encoder_layers": "--encoder-layers",
                   "num_decoder_layers": "--decoder-layers", "dropout": "--dropout",
                   "neighbor_size": "--neighbor-size", "jitter_scale": "--jitter-scale",
                   "standardize": "--standardize"},
    "infer_base": {"residual_norm": "--residual-norm", "residual_stages": "--residual-stages"},
    "train_diff": {"size": "--size", "model_channels": "--model-channels", "channel_mult": "--channel-mult",
                   "num_res_blocks": "--res-blocks", "attention_resolutions": "--attention",
                   "num_head_channels": "--head-channels", "steps": "--steps", "batch_size": "--batch-size",
                   "lr": "--lr", "ema": "--ema", "grid": "--grid", "n_s": "--ns", "t_max": "--t-max",
                   "ckpt_every": "--ckpt-every", "seed": "--seed", "model_condition": "--model-condition",
                   "task": "--task", "chain": "--chain", "crop": "--crop",
                   "diffusion_steps": "--diffusion-steps", "beta_start": "--beta-start", "beta_end": "--beta-end"},
    "infer_diff": {"t": "--t", "c": "--c", "l": "--l", "n_s": "--ns", "test_time_condition": "--test-time-condition",
                   "seed": "--seed", "bf16": "--bf16", "init": "--init", "distance": "--distance"},
    "fuse": {"gamma": "--gamma", "filter": "--filter", "t": "--t", "c": "--c", "l": "--l",
             "spatio_temporal": "--spatio-temporal", "multiscale_base": "--multiscale-base", "n_s": "--ns",
             "test_time_condition": "--test-time-condition", "seed": "--seed", "norm": "--norm", "init": "--init",
             "distance": "--distance", "fusion": "--fusion", "gate": "--gate", "image_gamma": "--image-gamma"},
    "score": {"source": "--source", "pool": "--pool"},
}
# Params a key leaves out while they hold the class default (keys made before the option existed stay valid):
# the preset may set another value, so the line spells the default out.
ABSENT = {"index": {"val_kinds": ["scratch", "spot", "perlin", "cutpaste"]},
          "infer_diff": {"init": "paper", "distance": "pixel"}, "train_diff": {"task": "paper", "crop": 0},
          "train_base": {"standardize": False}, "infer_base": {"residual_norm": "l2"}}
SWITCH_ONLY = {"--bf16"}  # on/off flags without a --no- form


def quote(text: Any) -> str:
    """A path or value as a shell word (unquoted when it needs no quotes)."""
    return shlex.quote(str(text))


def _value(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else shlex.quote(str(v))


def options(stage: str, params: dict) -> dict[str, Any]:
    """{flag: value} of every param of `params` this stage's CLI sets (ABSENT defaults spelled out; None and ()
    left out: they are the stage's "all" or "newest"), in the CLI's order."""
    params = {**ABSENT.get(stage, {}), **params}
    return {flag: params[key] for key, flag in FLAGS[stage].items()
            if params.get(key) is not None and not (isinstance(params[key], (list, tuple)) and not params[key])}


def entry_command(entry: Any, merge_c: Iterable[int] | None = None) -> str:
    """The line that makes `entry` again (an extract entry made from a local weight file names that file)."""
    weights = entry.attrs.get("weights_file") if entry.stage == "extract" else None
    return command(entry.stage, entry.store.name, entry.params, merge_c, weights)


def command(stage: str, run: str, params: dict | None = None, merge_c: Iterable[int] | None = None,
            weights: str | None = None) -> str:
    """`drdc <command> --run RUN` with every param of `params` this stage's CLI sets; None: the bare line
    (the preset's defaults). merge_c: infer-diff entries differing only in c, made by one line. weights: the
    local weight file an extract entry was made from."""
    info = STAGES[stage]
    if params is None or stage not in FLAGS:
        extra = f" {info.extra}" if info.extra else ""
        return f"drdc {info.command}{extra} --run {shlex.quote(str(run))}"
    if merge_c is not None:
        params = {**params, "c": sorted(merge_c)}
    parts = [f"drdc {info.command}", f"--run {shlex.quote(str(run))}"]
    for flag, v in options(stage, params).items():
        if isinstance(v, bool):
            if flag in SWITCH_ONLY:
                parts += [flag] if v else []
            else:
                parts.append(flag if v else f"--no-{flag[2:]}")
        else:
            parts.append(f"{flag} {_value(v)}")
    if weights:  # a local weight file: the key holds its hash, the entry's attrs its path
        parts.append(f"--weights {shlex.quote(weights)}")
    return " ".join(parts)


def with_validation(index: Any) -> str:
    """The `drdc index` line that makes index entry `index` again with validation images (normals and
    synthetic defects): its own root, size and categories, so the reruns that follow keep the run's data."""
    q = dict(index.params)
    q["val_fraction"] = q.get("val_fraction") or 0.1
    q["val_min"] = q.get("val_min") or 4
    q["val_defects"] = q.get("val_defects") or 2
    return command("index", index.store.name, q)
