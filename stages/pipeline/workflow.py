"""The whole pipeline in order, without the command line: what `drdc run` and `drdc demo` do.

index -> extract -> train-base -> infer-base -> score (base) -> train-diff -> infer-diff -> fuse -> score (fused),
then, for every preset but paper, tune on validation and fuse + score the chosen settings. Cached stages are
reused. Not a stage: it calls the stages in order and hands each result to `report`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from stages.pipeline import extract, fuse, index, infer_base, infer_diff, score, train_base, train_diff, tune
from stages.pipeline.selection import FuseParams
from stages.store.cache import RunStore
from stages.pipeline.runtime import StageResult
from stages.config.presets import build

Report = Callable[[StageResult], None]
ShowTrials = Callable[[list[dict], StageResult, FuseParams], None]


def _quiet(_: StageResult) -> None:
    pass


def tune_and_apply(store: RunStore, p: tune.TuneParams, progress: bool, report: Report = _quiet,
                   show: ShowTrials | None = None) -> StageResult:
    """Search on validation, then fuse + score the best settings: they become current. show(trials, tune
    result, best) is called between the search and the fusion (the CLI prints the ranking there)."""
    res, trials, best = tune.run(store, p, progress=progress)
    report(res)
    if show is not None:
        show(trials, res, best)
    report(fuse.run(store, best, progress=progress))
    scored = score.run(store, score.ScoreParams(source="fuse", pool=p.pool), progress=progress)
    report(scored)
    return scored


def run_all(store: RunStore, data: Path, preset: str, device: str, progress: bool, report: Report = _quiet,
            show: ShowTrials | None = None, base_epochs: int | None = None, diff_steps: int | None = None,
            image_size: int | None = None) -> list[str]:
    """Every stage in order; the keys of the score entries to report side by side: base only, the paper's
    fusion, and (all presets but paper) the fusion validation chose."""
    store.set_attr(preset=preset)
    report(index.run(store, build(index.IndexParams, "index", preset, root=str(data), image_size=image_size),
                     progress))
    report(extract.run(store, build(extract.ExtractParams, "extract", preset), device=device, progress=progress))
    report(train_base.run(store, build(train_base.TrainBaseParams, "train_base", preset, epochs=base_epochs),
                          device=device, progress=progress))
    report(infer_base.run(store, build(infer_base.InferBaseParams, "infer_base", preset), device=device,
                          progress=progress))
    base_score = score.run(store, score.ScoreParams(source="base"), progress=progress)
    report(base_score)
    report(train_diff.run(store, build(train_diff.TrainDiffParams, "train_diff", preset, steps=diff_steps),
                          device=device, progress=progress))
    diff_params = build(infer_diff.InferDiffParams, "infer_diff", preset)
    report(infer_diff.run(store, diff_params, device=device, progress=progress))
    report(fuse.run(store, FuseParams(c=diff_params.c, t=diff_params.t, l=diff_params.l), progress))
    fused_score = score.run(store, score.ScoreParams(source="fuse"), progress=progress)
    report(fused_score)
    keys = [base_score.key, fused_score.key]
    if preset != "paper":  # the paper preset keeps the paper's fusion; others end with what validation chose
        keys.append(tune_and_apply(store, tune.TuneParams(), progress, report, show).key)
    return keys
