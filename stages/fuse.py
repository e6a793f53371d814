"""Stage `fuse`: H_out (Eq 17-19) from cached maps only: no UNet, no GPU, seconds per category.

Any cached subset of (t, c, l) can be selected; a missing one is named with the infer-diff command that makes it.
Table 5's switches: spatio-temporal fusion off (only the last step, l = 1) and the multi-scale base heatmap.
--norm pixel|quantile fuses maps normalised with statistics of the validation normals (stored in the entry;
a validation row is normalised by the other fold's normals, stages.validation.folds);
--gamma 0 is base only and needs no diffusion maps.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from .commands import with_validation
from .cache import Entry, RunStore
from .common import StageResult, check
from .errors import CacheMissError, ConfigError
from .fusion import FILTER, GAMMA, check_fusion, check_norm
from .infer_diff import DISTANCES
from .inpaint import check_init
from .heatmaps import CrossFitStats, FusionSettings, fuse_maps, read_diff, source_maps
from .validation import folds, is_validation_normal

STAGE = "fuse"


@dataclass(frozen=True)
class FuseParams:
    gamma: float = GAMMA
    filter: int = FILTER
    t: tuple[int, ...] = ()  # empty: every t of the cached entries
    c: tuple[int, ...] = ()  # empty: every cached c
    l: tuple[int, ...] = ()  # noqa: E741  empty: every cached l
    spatio_temporal: bool = True
    multiscale_base: bool = False
    n_s: int = 2  # these three pick which infer-diff variant to fuse
    test_time_condition: bool = True
    seed: int = 0
    norm: str = "none"  # stages.fusion.NORMS; statistics from the validation normals
    init: str | None = None  # which infer-diff variant: its --init; None: that of the newest cached entry
    distance: str = "pixel"  # which of its maps: pixel (Eq 16) or feature (an entry made with --distance feature)

    def __post_init__(self) -> None:
        check_fusion(self.gamma, self.filter)
        check_norm(self.norm)
        if self.init is not None:
            check_init(self.init)
        check(self.distance in DISTANCES, "--distance", f"must be one of {', '.join(DISTANCES)}", self.distance)
        check(self.n_s >= 2, "--ns", "must be >= 2", self.n_s)


def _command(store: RunStore, p: FuseParams, cs, ts, ls) -> str:
    """The infer-diff line that makes the maps fuse asked for: the variant spelled out (the preset's start and
    distance may differ), t, c and l only where fuse asked for them (else infer-diff's own, from the run's
    preset, which fit the UNet the run trained)."""
    fmt = lambda v: ",".join(map(str, v))  # noqa: E731
    parts = [f"drdc infer-diff --run {store.name}"]
    parts += [f"{flag} {fmt(v)}" for flag, v in (("--t", ts), ("--c", cs), ("--l", ls)) if v]
    parts.append(f"--ns {p.n_s} --seed {p.seed}")
    if not p.test_time_condition:
        parts.append("--no-test-time-condition")
    parts.append((f"--init {p.init} " if p.init else "") + f"--distance {p.distance}")
    return " ".join(parts)


def matches(q: dict, n_s: int, ttc: bool, seed: int, init: str, distance: str) -> bool:
    """Whether infer-diff params q are of this variant (an entry with feature maps also holds the pixel ones)."""
    return (q["n_s"] == n_s and q["test_time_condition"] == ttc and q["seed"] == seed
            and q.get("init", "paper") == init and (distance == "pixel" or q.get("distance") == distance))


def newest_init(store: RunStore, p: FuseParams) -> str:
    """p.init, or when None the --init of the newest complete infer-diff entry of the current UNet (paper if none)."""
    if p.init is not None:
        return p.init
    index, unet = store.current("index"), store.current("train_diff")
    init = "paper"
    for e in store.entries():  # oldest first
        if e.stage == "infer_diff" and e.is_complete and e.inputs == {"index": index.key, "train_diff": unet.key}:
            init = e.params.get("init", "paper")
    return init


def diff_entries(store: RunStore, p: FuseParams) -> dict[int, Entry]:
    """The complete, fresh infer-diff entries of this variant, one per c (the newest when several t-lists)."""
    p = replace(p, init=newest_init(store, p))
    index, unet = store.current("index"), store.current("train_diff")
    found: dict[int, Entry] = {}
    for e in store.entries():
        q = e.params
        if (e.stage == "infer_diff" and e.is_complete and e.inputs == {"index": index.key, "train_diff": unet.key}
                and matches(q, p.n_s, p.test_time_condition, p.seed, p.init, p.distance)
                and (not p.c or q["c"] in p.c) and set(p.t) <= set(q["t"]) and set(p.l) <= set(q["l"])):
            found[q["c"]] = e  # entries() is oldest first: the newest wins
    missing = [c for c in p.c if c not in found]
    if missing or not found:
        want_c = missing or list(p.c)
        what = " ".join(f"{k}={','.join(map(str, v))}" for k, v in (("c", want_c), ("t", p.t), ("l", p.l)) if v)
        raise CacheMissError(f"no cached diffusion heatmaps {'for ' + what if what else 'of this variant'} "
                             f"(n_s {p.n_s}, seed {p.seed}, start {p.init}, {p.distance} maps); make them with "
                             f"`{_command(store, p, want_c, p.t, p.l)}`")
    return dict(sorted(found.items()))


def resolve(store: RunStore, p: FuseParams) -> tuple[FusionSettings, dict[int, Entry]]:
    """The settings fuse applies (given or common t and l; spatio-temporal fusion off keeps the last t at l = 1)
    and the infer-diff entries {c: entry} they read. gamma = 0 is base only and needs no diffusion maps."""
    if p.gamma == 0:
        p = replace(p, init="paper", distance="pixel")  # no diffusion maps: no variant
        ls = tuple(sorted(p.l or (1, 2, 4, 8))) if p.multiscale_base else ()
        return FusionSettings(0.0, p.filter, (), (), ls, p.spatio_temporal, p.multiscale_base, p.n_s,
                              p.test_time_condition, p.seed, (), p.norm), {}
    check(p.distance == "pixel" or set(p.l) <= {1}, "--l", "feature maps have one scale: l = 1", p.l)
    p = replace(p, init=newest_init(store, p))
    diffs = diff_entries(store, p)
    ts = sorted(p.t or set.intersection(*(set(e.params["t"]) for e in diffs.values())), reverse=True)
    ls = [1] if p.distance == "feature" else sorted(
        p.l or set.intersection(*(set(e.params["l"]) for e in diffs.values())))
    if not ts or not ls:
        raise CacheMissError("the cached infer-diff entries share no t or no l; pass --t/--l explicitly")
    if not p.spatio_temporal:  # Table 5: only the last reverse step, l = 1
        check(1 in ls, "--l", "spatio-temporal fusion off uses the l = 1 maps; include 1", tuple(ls))
        ts, ls = [min(ts)], [1]
    chains = tuple((c, tuple(e.params["t"])) for c, e in diffs.items())
    return FusionSettings(p.gamma, p.filter, tuple(ts), tuple(diffs), tuple(ls), p.spatio_temporal,
                          p.multiscale_base, p.n_s, p.test_time_condition, p.seed, chains, p.norm, p.init,
                          p.distance), diffs


def validation_normals(index: Entry, rec: np.ndarray) -> dict[str, np.ndarray]:
    """{category: positions in the per-image arrays of its validation normals}."""
    records = index.attrs["records"]
    out: dict[str, list[int]] = {}
    for k, i in enumerate(rec):
        if is_validation_normal(records[i]):
            out.setdefault(records[i]["category"], []).append(k)
    return {c: np.asarray(v, dtype=np.int64) for c, v in out.items()}


def normal_stats(index: Entry, base: Entry, diffs: dict[int, Entry], s: FusionSettings) -> CrossFitStats:
    """The normalisation statistics of settings s, from the cached maps of the validation normals only
    (cross-fitted for validation rows)."""
    rec = base.array("record")[:]
    size = int(index.params["image_size"])
    normals = validation_normals(index, rec)
    if not normals:
        raise ConfigError(f"--norm {s.norm}: the run has no validation normals to take statistics from; index "
                          f"again with `{with_validation(index)}` (then rerun the stages after it)")

    def maps_of(pos: np.ndarray):
        hb = torch.from_numpy(base.array("h_base").get_orthogonal_selection((pos,)))
        return source_maps(hb, read_diff(diffs, s, pos) if s.uses_diffusion else None, size, s)

    return CrossFitStats.compute(maps_of, normals, row_folds(index, rec), s)


def row_folds(index: Entry, rec: np.ndarray) -> dict[int, int]:
    """{row position: fold} of the validation rows of the per-image arrays (stages.validation.folds)."""
    of_record = folds(index.attrs["records"])
    return {k: of_record[i] for k, i in enumerate(rec) if i in of_record}


def run(store: RunStore, p: FuseParams, progress: bool = True) -> StageResult:
    t0 = time.perf_counter()
    base = store.current("infer_base")
    extract = store.get("extract", base.inputs["extract"])
    index = store.get("index", extract.inputs["index"])
    s, diffs = resolve(store, p)
    size_img = index.params["image_size"]
    resolved = {"gamma": p.gamma, "filter": p.filter, "t": list(s.t), "c": list(s.c), "l": list(s.l),
                "spatio_temporal": p.spatio_temporal, "multiscale_base": p.multiscale_base, "n_s": p.n_s,
                "test_time_condition": p.test_time_condition, "seed": p.seed,
                **({"norm": p.norm} if p.norm != "none" else {}),  # keys made before --norm stay valid
                **({"init": s.init} if s.init != "paper" else {}),
                **({"distance": s.distance} if s.distance != "pixel" else {})}
    inputs = {"infer_base": base.key, **{f"infer_diff@c={c}": e.key for c, e in diffs.items()}}
    entry, cached = store.begin(STAGE, resolved, inputs)
    k_maps = len(s.t) * len(s.c) * len(s.l)
    what = (f"{k_maps} diffusion heatmaps (t={list(s.t)}, c={list(s.c)}, l={list(s.l)}) + H_base" if diffs
            else "H_base only")
    summary = f"{what}, gamma={p.gamma}, m={p.filter}, norm={p.norm}"
    if diffs:
        summary += f", init={s.init}, distance={s.distance}"
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
    entry.require_array("record", (n,), "int64")[:] = rec
    done = entry.require_done(n)
    todo = entry.pending(n)
    with torch.no_grad(), tqdm(total=n, initial=n - sum(b - a for a, b in todo), desc="fuse", unit="img",
                               disable=not progress) as bar:
        for a, b in todo:
            hd = read_diff(diffs, s, slice(a, b)) if s.uses_diffusion else None
            st = (stats.per_row([records[i]["category"] for i in rec[a:b]], [fold.get(k) for k in range(a, b)])
                  if stats is not None else None)
            maps[a:b] = fuse_maps(torch.from_numpy(h_base_all[a:b]), hd, size_img, s, c_feat, st)[2].numpy()
            entry.mark_done(done, a, b)
            bar.update(b - a)
    size_diff = next(iter(diffs.values())).params["size"] if diffs else None
    entry.complete(c_feat=c_feat, diffusion_size=size_diff)
    return StageResult(STAGE, entry.key, False, time.perf_counter() - t0, summary)
