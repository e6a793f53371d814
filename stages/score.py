"""Stage `score`: image scores and per-category metrics from a heatmap entry.

Image score = max of the 16x16 average-pooled map at image resolution. Metrics (stages.metrics) per category,
then their mean over categories (the paper's "Avg" column). Pixel metrics only for categories with masks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .anomaly_map import image_score, upsample
from .cache import Entry, RunStore
from .common import StageResult, check
from .faults import point
from .metrics import METRIC_NAMES, compute_metrics

STAGE = "score"
SOURCES = {"base": ("infer_base", "h_base"), "fuse": ("fuse", "maps")}  # source name -> (stage, array)


@dataclass(frozen=True)
class ScoreParams:
    source: str = "base"
    pool: int = 16

    def __post_init__(self) -> None:
        check(self.source in SOURCES, "--source", f"must be one of {', '.join(SOURCES)}", self.source)
        check(1 <= self.pool <= 256, "--pool", "must be in [1, 256]", self.pool)


def category_maps(index: Entry, maps_entry: Entry, array: str, category: str) -> tuple[np.ndarray, np.ndarray,
                                                                                         np.ndarray, np.ndarray]:
    """(positions in the test arrays, labels, masks (n,S,S) uint8, maps (n,S,S) float32) of one category."""
    records = index.attrs["records"]
    rec_idx = maps_entry.array("record")[:]
    pos = np.array([k for k, i in enumerate(rec_idx) if records[i]["category"] == category], dtype=np.int64)
    labels = np.array([records[rec_idx[k]]["label"] for k in pos], dtype=np.int64)
    masks = index.array("masks").get_orthogonal_selection((rec_idx[pos],))
    size = masks.shape[-1]
    raw = torch.from_numpy(maps_entry.array(array).get_orthogonal_selection((pos,)).astype(np.float32))
    return pos, labels, masks, upsample(raw, size).numpy()


def run(store: RunStore, p: ScoreParams, progress: bool = True) -> StageResult:
    t0 = time.perf_counter()
    src_stage, array = SOURCES[p.source]
    src = store.current(src_stage)  # checked fresh, so its chain ends at the current index
    index = store.current("index")
    entry, cached = store.begin(STAGE, {"source": p.source, "pool": p.pool}, {"index": index.key, src_stage: src.key})
    if cached:
        return StageResult(STAGE, entry.key, True, time.perf_counter() - t0, _summary(entry.attrs["metrics"]))
    n = src.array("record").shape[0]
    scores = np.zeros(n, dtype=np.float32)
    metrics: dict[str, dict] = {}
    masked = set(index.attrs["masked_categories"])
    for cat in tqdm(index.attrs["categories"], desc="score", unit="category", disable=not progress):
        pos, labels, masks, maps = category_maps(index, src, array, cat)
        s = image_score(torch.from_numpy(maps), p.pool).numpy()
        scores[pos] = s
        metrics[cat] = compute_metrics(labels, s, masks if cat in masked else None, maps if cat in masked else None)
    metrics["mean"] = {
        m: (float(np.mean(v)) if (v := [metrics[c][m] for c in metrics if metrics[c][m] is not None]) else None)
        for m in METRIC_NAMES
    }
    entry.require_array("scores", (n,), "float32")[:] = scores
    entry.require_array("record", (n,), "int64")[:] = src.array("record")[:]
    point("score.data")  # a kill here leaves arrays without `complete`: rerun recomputes them
    entry.complete(metrics=metrics, source_stage=src_stage)
    return StageResult(STAGE, entry.key, False, time.perf_counter() - t0, _summary(metrics))


def _summary(metrics: dict) -> str:
    m = metrics["mean"]
    fmt = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    return f"mean I-AUROC {fmt(m['i_auroc'])}, P-AUROC {fmt(m['p_auroc'])}, AUPRO {fmt(m['p_aupro'])}"
