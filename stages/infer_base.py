"""Stage `infer-base`: the base heatmap H_base = ||F_in - F_out||_2 (Eq 2) of every validation and test image.

Stored at feature resolution (test, h_feat, w_feat) exactly as Eq 2 defines it; consumers upsample it to the
image with `stages.anomaly_map.upsample` so every consumer sees the same interpolation.
"""
from __future__ import annotations

import time

import torch
from tqdm import tqdm

from . import dist
from .cache import RunStore, claim_chunks
from .data import EVAL_SPLITS, split_indices
from .common import StageResult, resolve_device
from .models.reconstruction import base_heatmap
from .train_base import load_model

STAGE = "infer_base"


def run(store: RunStore, device: str = "auto", progress: bool = True) -> StageResult:
    t0 = time.perf_counter()
    extract = store.current("extract")
    trained = store.current("train_base")
    index = store.get("index", extract.inputs["index"])
    dev = resolve_device(device)
    entry, cached = store.begin(STAGE, {}, {"extract": extract.key, "train_base": trained.key},
                                 exclusive=False)
    idx = split_indices(index.attrs["records"], EVAL_SPLITS)
    n = len(idx)
    feats = extract.array("features")
    fs = feats.shape[-1]
    if cached:
        return StageResult(STAGE, entry.key, True, time.perf_counter() - t0, f"{n} validation + test heatmaps")
    dist.start_together(dev)  # torchrun: ranks begin claiming at once, so each takes its own share
    model = load_model(trained, dev)
    entry.require_array("record", (n,), "int64")[:] = idx
    maps = entry.require_array("h_base", (n, fs, fs), "float32")
    done = entry.require_done(n)
    todo = entry.pending(n)
    with torch.inference_mode(), tqdm(total=n, initial=n - sum(b - a for a, b in todo), desc="infer-base",
                                      unit="img", disable=not progress) as bar:
        for a, b in claim_chunks([entry], n, rank=dist.rank(), world=dist.world_size()):
            f_in = torch.from_numpy(feats.get_orthogonal_selection((idx[a:b],))).to(dev)
            maps[a:b] = base_heatmap(f_in, model(f_in)).cpu().numpy()  # Eq 2
            entry.mark_done(done, a, b)
            bar.update(b - a)
    entry.complete(device=str(dev))
    return StageResult(STAGE, entry.key, False, time.perf_counter() - t0, f"{n} validation + test heatmaps ({fs}x{fs})")
