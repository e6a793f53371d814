"""Stage `score`: image scores and per-category metrics from a heatmap entry.

Image score = max of the 16x16 average-pooled map at image resolution. Metrics (stages.method.metrics) per category,
then their mean over categories (the paper's "Avg" column). Pixel metrics only for categories with masks.
Test metrics (`metrics`, and `test_by_kind`: each defect folder of a category against its good images, so a
user sees which kinds of defect a model misses) and validation metrics (`val_metrics`: held-out normals against their synthetic-defect
copies, every category has masks there; `val_by_kind`: the same per defect kind) are kept apart and labelled.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from stages.data.validation import kind_of
from stages.method.anomaly_map import image_score, upsample
from stages.method.metrics import compute_metrics, mean_over_categories
from stages.config.settings import key_of
from stages.pipeline.params import SOURCES
from stages.pipeline.reading import category_maps, content
from stages.store.cache import Entry, RunStore
from stages.pipeline.runtime import StageResult
from stages.store.faults import point
from stages.pipeline.params import ScoreParams  # noqa: F401 (torch-free, re-exported)

STAGE = "score"


def run(store: RunStore, p: ScoreParams, progress: bool = True) -> StageResult:
    t0 = time.perf_counter()
    src_stage, array = SOURCES[p.source]
    src = store.current(src_stage)  # checked fresh, so its chain ends at the current index
    index = store.current("index")
    entry, cached = store.begin(STAGE, key_of(p), {"index": index.key, src_stage: src.key})
    if cached:
        if "test_by_kind" not in entry.attrs and store.writable:  # scored before the per-kind rows: add them
            entry.update(test_by_kind=measure(index, src, array, p, progress)[1]["test_by_kind"])
        return StageResult(STAGE, entry.key, True, time.perf_counter() - t0, _summary(entry.attrs))
    scores, tables = measure(index, src, array, p, progress)
    n = len(scores)
    entry.require_array("scores", (n,), "float32")[:] = scores
    entry.require_array("record", (n,), "int64")[:] = src.array("record")[:]
    point("score.data")  # a kill here leaves arrays without `complete`: rerun recomputes them
    entry.complete(**tables, source_stage=src_stage)
    return StageResult(STAGE, entry.key, False, time.perf_counter() - t0, _summary(entry.attrs))


def measure(index: Entry, src: Entry, array: str, p: ScoreParams, progress: bool) -> tuple[np.ndarray, dict]:
    """Image scores of every row, and the tables: `metrics` (test, per category), `test_by_kind` ({category:
    {defect folder: metrics of that folder's images against the category's good ones}}), `val_metrics` and
    `val_by_kind` ({synthetic kind: {category: metrics}}), each table with its mean over categories."""
    rec_idx = src.array("record")[:]
    scores = np.zeros(len(rec_idx), dtype=np.float32)
    masked = set(index.attrs["masked_categories"])
    cats = index.attrs["categories"]
    records = [index.attrs["records"][i] for i in rec_idx]
    kinds = sorted({k for r in records if (k := kind_of(r))})
    metrics, val_metrics, test_by_kind = {}, {}, {}
    by_kind: dict[str, dict] = {k: {} for k in kinds}
    for cat in tqdm(cats, desc="score", unit="category", disable=not progress):
        pos, labels, masks, maps = category_maps(index, src, array, cat)
        v = content(index, rec_idx[pos])
        s = _image_scores(src, pos, maps, p.pool, v)
        scores[pos] = s
        loc = cat in masked
        metrics[cat] = compute_metrics(labels, s, masks if loc else None, maps if loc else None, valid=v)
        defect = np.array([records[k]["defect"] for k in pos])
        test_by_kind[cat] = {}
        for d in sorted(set(defect[labels == 1])):  # each real defect kind against the category's good images
            sel = (labels == 0) | (defect == d)
            test_by_kind[cat][d] = compute_metrics(labels[sel], s[sel], masks[sel] if loc else None,
                                                   maps[sel] if loc else None, valid=None if v is None else v[sel])
        pos, labels, masks, maps = category_maps(index, src, array, cat, "val")
        if len(pos):  # validation: every image has a mask (the normals' are empty), so every category localises
            v = content(index, rec_idx[pos])
            s = _image_scores(src, pos, maps, p.pool, v)
            scores[pos] = s
            val_metrics[cat] = compute_metrics(labels, s, masks, maps, valid=v)
            kind = np.array([kind_of(records[k]) or "" for k in pos])
            for k in kinds:
                sel = (labels == 0) | (kind == k)
                by_kind[k][cat] = compute_metrics(labels[sel], s[sel], masks[sel], maps[sel],
                                                  valid=None if v is None else v[sel])
    for table in (metrics, val_metrics, *by_kind.values()):
        if table:
            table["mean"] = mean_over_categories(table)
    return scores, {"metrics": metrics, "test_by_kind": test_by_kind, "val_metrics": val_metrics,
                    "val_by_kind": by_kind}


def _image_scores(src: Entry, pos: np.ndarray, maps: np.ndarray, pool: int, valid) -> np.ndarray:
    """Image scores of rows pos: from the entry's `image_maps` when its fusion gave image scores a map of their own
    (fuse --image-gamma), else from the pixel maps."""
    if src.has("image_maps"):
        maps = upsample(torch.from_numpy(src.array("image_maps").get_orthogonal_selection((pos,))), maps.shape[-1])
        return image_score(maps, pool, valid).numpy()
    return image_score(torch.from_numpy(maps), pool, valid).numpy()


def _summary(attrs: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    line = lambda m: f"I-AUROC {fmt(m['i_auroc'])}, P-AUROC {fmt(m['p_auroc'])}, AUPRO {fmt(m['p_aupro'])}"  # noqa: E731
    text = f"test: mean {line(attrs['metrics']['mean'])}"
    if attrs.get("val_metrics"):
        text += f"; validation (synthetic defects): {line(attrs['val_metrics']['mean'])}"
    return text
