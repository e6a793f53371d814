"""The stages, in pipeline order: their store names, the command that produces each, and their inputs.

Used for "run this first" messages, `drdc cache ls` ordering and the run file's tables (the stages with
parameters a run file sets, in this order). A stage never imports another stage; it names its inputs here and reads
them from the run store.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageInfo:
    name: str  # group name in the run store
    command: str  # CLI command that produces it
    inputs: tuple[str, ...]  # upstream stage names
    extra: str = ""  # required options to show in hints
    shown: tuple[str, ...] = ()  # the key parameters `drdc cache ls` shows
    files: tuple[str, ...] = ()  # files/ a complete entry must hold (without them it is not complete)
    arrays: tuple[str, ...] = ()  # the arrays a complete entry holds (stages.store.integrity checks them)
    params: str = ""  # "module:Class" of its parameters (their settings: flags, run-file keys), if it has any


STAGES: dict[str, StageInfo] = {
    s.name: s
    for s in (
        StageInfo("index", "index", (), "--data ROOT", ("root", "image_size", "categories"),
                  arrays=("images", "masks", "done"), params="stages.pipeline.params:IndexParams"),
        StageInfo("extract", "extract", ("index",), "", ("backbone", "feature_size"), arrays=("features", "done"),
                  params="stages.pipeline.params:ExtractParams"),
        StageInfo("train_base", "train-base", ("extract",), "",
                  ("epochs", "batch_size", "lr", "schedule", "hidden_dim", "standardize", "seed"),
                  ("model.pt", "config.json"), params="stages.pipeline.params:TrainBaseParams"),
        StageInfo("infer_base", "infer-base", ("extract", "train_base"), "", ("residual_norm", "residual_stages"),
                  arrays=("h_base", "record", "done"), params="stages.pipeline.params:InferBaseParams"),
        StageInfo("train_diff", "train-diff", ("index",), "",
                  ("size", "steps", "batch_size", "lr", "model_channels", "model_condition", "grid", "task", "seed"),
                  ("model.pt", "config.json"), params="stages.pipeline.params:TrainDiffParams"),
        StageInfo("infer_diff", "infer-diff", ("index", "train_diff"), "",
                  ("t", "c", "l", "n_s", "test_time_condition", "init", "distance", "seed"),
                  arrays=("heatmaps", "record", "done"), params="stages.pipeline.params:InferDiffParams"),
        StageInfo("fuse", "fuse", ("infer_base", "infer_diff"), "",
                  ("gamma", "filter", "t", "c", "l", "spatio_temporal", "multiscale_base", "norm", "init",
                   "distance"), arrays=("maps", "record", "done"), params="stages.pipeline.params:FuseParams"),
        StageInfo("score", "score", ("index", "infer_base|fuse"), "", ("source", "pool"), arrays=("scores", "record"),
                  params="stages.pipeline.params:ScoreParams"),
        StageInfo("tune", "tune", ("infer_base", "infer_diff"), "", ("objective", "rounds", "eval_size")),
        StageInfo("calibrate", "calibrate", ("train_base", "train_diff"), "", ("normals",)),
    )
}


def hint(stage: str, run: str) -> str:
    """The command line that (re)makes a stage's result, e.g. `drdc extract --run runs/x.zarr`."""
    info = STAGES[stage]
    extra = f" {info.extra}" if info.extra else ""
    return f"drdc {info.command}{extra} --run {run}"
