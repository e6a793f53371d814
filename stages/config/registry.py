"""The stages, in pipeline order: their store names, their inputs, and the class of their parameters.

Used for "run this first" messages, `drdc cache ls` ordering and the run file's tables (the stages with
parameters a run file sets, in this order). A stage never imports another stage; it names its inputs here and reads
them from the run store. The commands that run them are the CLI's (drdc_cli.commands).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StageInfo:
    name: str  # group name in the run store
    inputs: tuple[str, ...]  # upstream stage names
    shown: tuple[str, ...] = ()  # the key parameters `drdc cache ls` shows
    files: tuple[str, ...] = ()  # files/ a complete entry must hold (without them it is not complete)
    arrays: tuple[str, ...] = ()  # the arrays a complete entry holds (stages.store.integrity checks them)
    params: str = ""  # "module:Class" of its parameters (their settings: flags, run-file keys), if it has any


STAGES: dict[str, StageInfo] = {
    s.name: s
    for s in (
        StageInfo("index", (), ("root", "image_size", "categories"),
                  arrays=("images", "masks", "done"), params="stages.pipeline.params:IndexParams"),
        StageInfo("extract", ("index",), ("backbone", "feature_size"), arrays=("features", "done"),
                  params="stages.pipeline.params:ExtractParams"),
        StageInfo("train_base", ("extract",),
                  ("epochs", "batch_size", "lr", "schedule", "hidden_dim", "standardize", "seed"),
                  ("model.pt", "config.json"), params="stages.pipeline.params:TrainBaseParams"),
        StageInfo("infer_base", ("extract", "train_base"), ("residual_norm", "residual_stages"),
                  arrays=("h_base", "record", "done"), params="stages.pipeline.params:InferBaseParams"),
        StageInfo("train_diff", ("index",),
                  ("size", "steps", "batch_size", "lr", "model_channels", "model_condition", "grid", "task", "seed"),
                  ("model.pt", "config.json"), params="stages.pipeline.params:TrainDiffParams"),
        StageInfo("infer_diff", ("index", "train_diff"),
                  ("t", "c", "l", "n_s", "test_time_condition", "init", "distance", "seed"),
                  arrays=("heatmaps", "record", "done"), params="stages.pipeline.params:InferDiffParams"),
        StageInfo("fuse", ("infer_base", "infer_diff"),
                  ("gamma", "filter", "t", "c", "l", "spatio_temporal", "multiscale_base", "norm", "init",
                   "distance"), arrays=("maps", "record", "done"), params="stages.pipeline.params:FuseParams"),
        StageInfo("score", ("index", "infer_base|fuse"), ("source", "pool"), arrays=("scores", "record"),
                  params="stages.pipeline.params:ScoreParams"),
        StageInfo("tune", ("infer_base", "infer_diff"), ("objective", "rounds", "eval_size")),
        StageInfo("calibrate", ("train_base", "train_diff"), ("normals",)),
    )
}


def params_class(stage: str) -> Any:
    """The parameters class the registry names for `stage` (torch-free: stages.pipeline.params)."""
    module, name = STAGES[stage].params.split(":")
    return getattr(importlib.import_module(module), name)
