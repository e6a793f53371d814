"""Stage `infer-diff`: diffusion heatmaps H^{t,c,l} (Eq 9-16) of every validation and test image, one cache entry per grid size c.

For each test image, every (c, i) sequence (n_c grid sizes x n_s mask sets) goes through the UNet as one batch per
timestep. Masks and noise come from per-(image, c) generators, so an entry's numbers do not depend on which other
c are computed alongside it, on batch order or on sharding. A (t-list, c) already cached is not recomputed; every
x0_t depends on the whole t-list (the chain starts at max t), so the t-list is part of each entry's key.
Heatmaps are stored at the diffusion resolution in float16: `heatmaps` (n, n_t, n_l, S, S), Eq 16's pixel
distance; with --distance feature also `feature` (n, n_t, S, S), the backbone-feature distance
(stages.method.feature_distance; one scale, fused as l = 1). --init picks how the reverse process starts
(stages.method.inpaint.INITS); the paper's start and the pixel distance keep the keys they always had.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from stages.data.dataset import EVAL_SPLITS, split_indices
from stages.data.images import to_model_space
from stages.method.diffusion import Schedule, linear_schedule
from stages.method.feature_distance import feature_heatmap, features
from stages.method.fusion import diff_heatmap
from stages.method.inpaint import Noise, assemble, inpaint
from stages.method.masks import grid_masks, image_generator
from stages.models.backbone import load_matching
from stages.models.unet import InferenceUNet
from stages.pipeline.chunked import chunks
from stages.pipeline.trained import check_maps, load_unet, schedule_of
from stages.pipeline import dist
from stages.store.cache import Entry, RunStore
from stages.pipeline.runtime import StageResult, resolve_device
from stages.pipeline.params import InferDiffParams  # noqa: F401 (torch-free, re-exported)

STAGE = "infer_diff"


def sequence_draws(p: InferDiffParams, rec: np.ndarray, cs: list[int], size: int
                   ) -> tuple[torch.Tensor, list[torch.Generator]]:
    """The masks M (k * n_c * n_s, 1, S, S) of every (image, c, i) sequence, image-major then c then i, and one
    noise generator per (image, c): stream 2c of image r's seed draws its masks of grid size c, stream 2c + 1 its
    noise. rec (k,): record indices (or predict's content ids)."""
    M, gens = [], []  # noqa: N806
    for r in rec:
        for c in cs:
            M.append(grid_masks(size, c, p.n_s, image_generator(p.seed, int(r), 2 * c)))
            gens.append(image_generator(p.seed, int(r), 2 * c + 1))
    return torch.cat(M), gens


def drawn_heatmaps(model, p: InferDiffParams, images: torch.Tensor, M: torch.Tensor, noise: Noise, n_c: int,  # noqa: N803
                   phi=None, size_in: int = 224, sched: Schedule | None = None) -> dict[str, torch.Tensor]:
    """The heatmaps of k images from their sequences' masks M and noise (`sequence_draws`' layout; noise: the
    generators, or the draws themselves as `inpaint` takes them) -> {"heatmaps": (k, n_c, n_t, n_l, S, S),
    "feature": (k, n_c, n_t, S, S) when p.distance is feature}. images (k, 3, S, S) in model space on M's device."""
    sched = sched or linear_schedule()
    I_ori = images.repeat_interleave(n_c * p.n_s, 0)  # noqa: N806  (k * n_c * n_s, ...), rows as M's
    x0 = inpaint(model, I_ori, M, p.t, sched, noise, model_condition=model.config.model_condition,
                 test_time_condition=p.test_time_condition, init=p.init)
    k = images.shape[0]
    ori = I_ori[:: p.n_s]  # one row per (image, c) group
    out = {t: assemble(x0[t], M, p.n_s) for t in p.t}  # Eq 10
    maps = torch.stack([torch.stack([diff_heatmap(ori, out[t], l) for l in p.l], 1) for t in p.t], 1)  # Eq 16
    result = {"heatmaps": maps.view(k, n_c, *maps.shape[1:])}  # (k, n_c, n_t, n_l, S, S)
    if p.distance == "feature":
        f_ori = [f.repeat_interleave(n_c, 0) for f in features(phi, images, size_in)]  # once per image
        feat = torch.stack([feature_heatmap(f_ori, features(phi, out[t], size_in), images.shape[-1])
                            for t in p.t], 1)
        result["feature"] = feat.view(k, n_c, *feat.shape[1:])  # (k, n_c, n_t, S, S)
    return result


def image_heatmaps(model, p: InferDiffParams, images: torch.Tensor, rec: np.ndarray, cs: list[int],
                   size: int, dev: torch.device, phi=None, size_in: int = 224, sched: Schedule | None = None
                   ) -> dict[str, dict[int, torch.Tensor]]:
    """All (image, c, i) sequences of a chunk as one batch per step -> {array name: {c: maps}}:
    "heatmaps" (k, n_t, n_l, S, S) always; "feature" (k, n_t, S, S) when p.distance is feature (phi: the run's
    backbone, fed images at size_in). sched: the UNet's noise schedule (None: the paper's)."""
    M, gens = sequence_draws(p, rec, cs, size)  # noqa: N806
    result = drawn_heatmaps(model, p, images.to(dev), M.to(dev), gens, len(cs), phi, size_in, sched)
    return {name: {c: m[:, i] for i, c in enumerate(cs)} for name, m in result.items()}


def run(store: RunStore, p: InferDiffParams, device: str = "auto", progress: bool = True,
        compile: bool = False, weights=None) -> StageResult:  # noqa: A002
    """compile: torch.compile the UNet (inductor); not part of the key, it changes results by ~1e-6 at most.
    weights: the backbone weights file given to `extract` (feature distance only; found offline otherwise)."""
    t0 = time.perf_counter()
    index = store.current("index")
    unet_entry = store.current("train_diff")
    size = unet_entry.params["size"]
    sched = schedule_of(unet_entry.params)
    check_maps(unet_entry.params, p.t, p.c, p.l, p.n_s)  # the UNet's schedule may be shorter than the paper's
    dev = resolve_device(device)
    idx = split_indices(index.attrs["records"], EVAL_SPLITS)
    n, n_t, n_l = len(idx), len(p.t), len(p.l)
    inputs = {"index": index.key, "train_diff": unet_entry.key}
    entries: dict[int, Entry] = {}  # the c still to compute
    keys, cached = [], []
    for c in p.c:
        e, was_cached = store.begin(STAGE, p.entry_params(c, size), inputs, seed=p.seed, exclusive=False)
        keys.append(e.key)
        if was_cached:
            cached.append(c)
        else:
            entries[c] = e
    summary = f"{n} validation + test images x {n_t} t x {len(p.c)} c x {n_l} l heatmaps at {size} px"
    if not entries:
        return StageResult(STAGE, ",".join(keys), True, time.perf_counter() - t0, summary)
    dist.start_together(dev)  # torchrun: ranks begin claiming at once, so each takes its own share
    model = load_unet(unet_entry, dev)
    phi = size_in = None
    if p.distance == "feature":
        phi = load_matching(store.current("extract").params, weights).to(dev).eval()
        size_in = int(index.params["image_size"])
    if dev.type == "cuda" or p.bf16 or compile:  # on the CPU plain fp32 NCHW is fastest (benchmarks/RESULTS.md)
        model = InferenceUNet(model, channels_last=dev.type == "cuda", bf16=p.bf16, compile=compile)
    arrays = {}
    for c, e in entries.items():
        e.require_array("record", (n,), "int64")[:] = idx
        shapes = {"heatmaps": (n, n_t, n_l, size, size), **({"feature": (n, n_t, size, size)}
                                                          if p.distance == "feature" else {})}
        arrays[c] = ({a: e.require_array(a, shp, "float16") for a, shp in shapes.items()}, e.require_done(n))
    # A chunk pending for any c is computed for every c of this call, so a resumed run batches exactly like
    # the uninterrupted one (bit-identical); only the c still pending are written, so a chunk already done is
    # never overwritten. An entry computed in another call, beside other c, may differ from a fresh all-c run
    # in the last bits of float arithmetic.
    cs = sorted(entries)
    images = index.array("images")
    with torch.inference_mode():
        for a, b in chunks([entries[c] for c in cs], n, "infer-diff", progress, shared=True):
            x = to_model_space(images.get_orthogonal_selection((idx[a:b],)), size)
            maps = image_heatmaps(model, p, x, idx[a:b], cs, size, dev, phi, size_in, sched)
            todo_c = [c for c in cs if not arrays[c][1][a:b].all()]
            for c in todo_c:  # their flags follow, set by chunks()
                for name, arr in arrays[c][0].items():
                    arr[a:b] = maps[name][c].cpu().numpy().astype(np.float16)
    for c, e in entries.items():
        e.complete(device=str(dev))
    note = f" (c={','.join(map(str, cached))} cached)" if cached else ""
    return StageResult(STAGE, ",".join(keys), False, time.perf_counter() - t0, summary + note)
