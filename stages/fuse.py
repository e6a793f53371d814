"""Stage `fuse`: H_out (Eq 17-19) from cached maps only: no UNet, no GPU, seconds per category.

Any cached subset of (t, c, l) can be selected; a missing one is named with the infer-diff command that makes it.
Table 5's switches: spatio-temporal fusion off (only the last step, l = 1) and the multi-scale base heatmap.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .anomaly_map import upsample
from .cache import Entry, RunStore
from .common import StageResult, check
from .errors import CacheMissError
from .fusion import check_fusion, drdc_map, multiscale_base, spatio_temporal

STAGE = "fuse"


@dataclass(frozen=True)
class FuseParams:
    gamma: float = 0.9
    filter: int = 41
    t: tuple[int, ...] = ()  # empty: every t of the cached entries
    c: tuple[int, ...] = ()  # empty: every cached c
    l: tuple[int, ...] = ()  # noqa: E741  empty: every cached l
    spatio_temporal: bool = True
    multiscale_base: bool = False
    n_s: int = 2  # these three pick which infer-diff variant to fuse
    test_time_condition: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_fusion(self.gamma, self.filter)
        check(self.n_s >= 2, "--ns", "must be >= 2", self.n_s)


def _command(store: RunStore, p: FuseParams, cs, ts, ls) -> str:
    flags = "" if p.test_time_condition else " --no-test-time-condition"
    fmt = lambda v: ",".join(map(str, v))  # noqa: E731
    return (f"drdc infer-diff --run {store.name} --t {fmt(ts)} --c {fmt(cs)} --l {fmt(ls)} --ns {p.n_s} "
            f"--seed {p.seed}{flags}")


def diff_entries(store: RunStore, p: FuseParams) -> dict[int, Entry]:
    """The complete, fresh infer-diff entries of this variant, one per c (the newest when several t-lists)."""
    index, unet = store.current("index"), store.current("train_diff")
    found: dict[int, Entry] = {}
    for e in store.entries():
        q = e.params
        if (e.stage == "infer_diff" and e.is_complete and e.inputs == {"index": index.key, "train_diff": unet.key}
                and q["n_s"] == p.n_s and q["test_time_condition"] == p.test_time_condition and q["seed"] == p.seed
                and (not p.c or q["c"] in p.c) and set(p.t) <= set(q["t"]) and set(p.l) <= set(q["l"])):
            found[q["c"]] = e  # entries() is oldest first: the newest wins
    missing = [c for c in p.c if c not in found]
    if missing or not found:
        want_c = missing or list(p.c) or [1, 16, 32]
        raise CacheMissError(f"no cached diffusion heatmaps for c={','.join(map(str, want_c))}"
                             f"{' t=' + ','.join(map(str, p.t)) if p.t else ''}"
                             f"{' l=' + ','.join(map(str, p.l)) if p.l else ''}; make them with "
                             f"`{_command(store, p, want_c, p.t or (250, 200, 150, 100, 50, 0), p.l or (1, 2, 4, 8))}`")
    return dict(sorted(found.items()))


def run(store: RunStore, p: FuseParams, progress: bool = True) -> StageResult:
    t0 = time.perf_counter()
    base = store.current("infer_base")
    extract = store.get("extract", base.inputs["extract"])
    index = store.get("index", extract.inputs["index"])
    diffs = diff_entries(store, p)
    first = next(iter(diffs.values())).params
    ts = sorted(p.t or set.intersection(*(set(e.params["t"]) for e in diffs.values())), reverse=True)
    ls = sorted(p.l or set.intersection(*(set(e.params["l"]) for e in diffs.values())))
    if not ts or not ls:
        raise CacheMissError("the cached infer-diff entries share no t or no l; pass --t/--l explicitly")
    if not p.spatio_temporal:  # Table 5: only the last reverse step, l = 1
        check(1 in ls, "--l", "spatio-temporal fusion off uses the l = 1 maps; include 1", tuple(ls))
        ts, ls = [min(ts)], [1]
    size_img, size_diff = index.params["image_size"], first["size"]
    resolved = {"gamma": p.gamma, "filter": p.filter, "t": ts, "c": list(diffs), "l": ls,
                "spatio_temporal": p.spatio_temporal, "multiscale_base": p.multiscale_base, "n_s": p.n_s,
                "test_time_condition": p.test_time_condition, "seed": p.seed}
    inputs = {"infer_base": base.key, **{f"infer_diff@c={c}": e.key for c, e in diffs.items()}}
    entry, cached = store.begin(STAGE, resolved, inputs)
    k_maps = len(ts) * len(diffs) * len(ls)
    summary = f"{k_maps} diffusion heatmaps (t={ts}, c={list(diffs)}, l={ls}) + H_base, gamma={p.gamma}, m={p.filter}"
    if cached:
        return StageResult(STAGE, entry.key, True, time.perf_counter() - t0, summary)
    rec = base.array("record")[:]
    n = len(rec)
    for e in diffs.values():
        if not np.array_equal(e.array("record")[:], rec):
            raise CacheMissError(f"infer-diff entry {e.key} covers other test images than infer-base {base.key}")
    c_feat = int(extract.attrs["channels"])
    h_base_all = base.array("h_base")
    maps = entry.require_array("maps", (n, size_img, size_img), "float32")
    entry.require_array("record", (n,), "int64")[:] = rec
    done = entry.require_done(n)
    todo = entry.pending(n)
    sel = {c: ([e.params["t"].index(t) for t in ts], [e.params["l"].index(l) for l in ls]) for c, e in diffs.items()}
    with torch.no_grad(), tqdm(total=n, initial=n - sum(b - a for a, b in todo), desc="fuse", unit="img",
                               disable=not progress) as bar:
        for a, b in todo:
            hb = torch.from_numpy(h_base_all[a:b])
            hb = multiscale_base(hb, size_img, ls) if p.multiscale_base else upsample(hb, size_img)
            parts = []
            for c, e in diffs.items():
                ti, li = sel[c]
                h = e.array("heatmaps")[a:b][:, ti][:, :, li]  # (k, n_t, n_l, S_d, S_d)
                parts.append(torch.from_numpy(h.astype(np.float32)).flatten(1, 2))
            # Eq 17 at the diffusion resolution, then one bilinear upsampling: both are linear, so this equals
            # averaging the upsampled maps, at a fraction of the cost.
            h_st = upsample(spatio_temporal(torch.cat(parts, 1)), size_img)
            maps[a:b] = drdc_map(hb, h_st[:, None], p.gamma, p.filter, c_feat, 3).numpy()  # Eq 18-19
            entry.mark_done(done, a, b)
            bar.update(b - a)
    entry.complete(c_feat=c_feat, diffusion_size=size_diff)
    return StageResult(STAGE, entry.key, False, time.perf_counter() - t0, summary)

