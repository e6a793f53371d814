"""Stage `fuse`: H_out (Eq 17-19) from cached maps only: no UNet, no GPU, seconds per category.

Any cached subset of (t, c, l) can be selected; a missing one is named with the infer-diff command that makes it.
Table 5's switches: spatio-temporal fusion off (only the last step, l = 1) and the multi-scale base heatmap.
--norm pixel|quantile fuses maps normalised with statistics of the validation normals (stored in the entry;
a validation row is normalised by the other fold's normals, stages.data.validation.folds);
--gamma 0 is base only and needs no diffusion maps. --fusion highpass|gated refines the base map with the diffusion
map's detail or where the base map is raised; --image-gamma takes the image scores from a fusion of their own
(stored as `image_maps`; `maps` stays the pixel map).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from stages.errors import CacheMissError
from stages.pipeline.chunked import chunks
from stages.pipeline.heatmaps import fuse_maps, image_maps, read_diff
from stages.pipeline.selection import FuseParams, normal_stats, resolve, row_folds
from stages.store.cache import RunStore
from stages.pipeline.runtime import StageResult

STAGE = "fuse"


def run(store: RunStore, p: FuseParams, progress: bool = True) -> StageResult:
    t0 = time.perf_counter()
    base = store.current("infer_base")
    extract = store.get("extract", base.inputs["extract"])
    index = store.get("index", extract.inputs["index"])
    s, diffs = resolve(store, p)
    size_img = index.params["image_size"]
    resolved = {k: v for k, v in s.as_dict().items() if k != "chains"}  # the chains are the inputs' own
    inputs = {"infer_base": base.key, **{f"infer_diff@c={c}": e.key for c, e in diffs.items()}}
    entry, cached = store.begin(STAGE, resolved, inputs)
    k_maps = len(s.t) * len(s.c) * len(s.l)
    what = (f"{k_maps} diffusion heatmaps (t={list(s.t)}, c={list(s.c)}, l={list(s.l)}) + H_base" if diffs
            else "H_base only")
    summary = f"{what}, gamma={p.gamma}, m={p.filter}, norm={p.norm}"
    if diffs:
        summary += f", init={s.init}, distance={s.distance}"
    if s.fusion != "add":
        summary += f", fusion={s.fusion}" + (f" (gate {s.gate})" if s.fusion == "gated" else "")
    if s.scores_own_map:
        summary += f", image scores at gamma={s.image_gamma}"
    if cached:
        return StageResult(STAGE, entry.key, True, time.perf_counter() - t0, summary)
    rec = base.array("record")[:]
    n = len(rec)
    for e in diffs.values():
        if not np.array_equal(e.array("record")[:], rec):
            raise CacheMissError(f"infer-diff entry {e.key} covers other images than infer-base {base.key}")
    c_feat = int(extract.attrs["channels"])
    stats, fold = None, row_folds(index, rec)
    if p.norm != "none":
        stats = normal_stats(index, base, diffs, s)
        stats.save(entry)  # predict and calibrate normalise exactly as this entry does
    records = index.attrs["records"]
    h_base_all = base.array("h_base")
    maps = entry.require_array("maps", (n, size_img, size_img), "float32")
    # with an image gamma of its own, the map the image scores are taken from (score reads it)
    image = entry.require_array("image_maps", (n, size_img, size_img), "float32") if s.scores_own_map else None
    entry.require_array("record", (n,), "int64")[:] = rec
    with torch.no_grad():
        for a, b in chunks([entry], n, "fuse", progress):
            hd = read_diff(diffs, s, slice(a, b)) if s.uses_diffusion else None
            st = (stats.per_row([records[i]["category"] for i in rec[a:b]], [fold.get(k) for k in range(a, b)])
                  if stats is not None else None)
            hf = torch.from_numpy(h_base_all[a:b])
            hb, h_st, h_out = fuse_maps(hf, hd, size_img, s, c_feat, st)
            maps[a:b] = h_out.numpy()
            if image is not None:
                image[a:b] = image_maps(hf, hb, h_st, h_out, s, c_feat, st).numpy()
    size_diff = next(iter(diffs.values())).params["size"] if diffs else None
    entry.complete(c_feat=c_feat, diffusion_size=size_diff)
    return StageResult(STAGE, entry.key, False, time.perf_counter() - t0, summary)
