"""Which cached maps a fusion reads: `drdc fuse`'s parameters, the infer-diff entries of a variant, the settings
they resolve to, and the validation normals' statistics of normalised fusion.

Shared by the fuse and tune stages, ablate and predict (the stage `fuse` itself only writes H_out).
"""
from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import torch

from stages.data.validation import folds, is_validation_normal
from stages.errors import CacheMissError, ConfigError, Option, Step, check
from stages.pipeline.heatmaps import CrossFitStats, FusionSettings, read_diff, source_maps
from stages.pipeline.params import FuseParams
from stages.pipeline.params.data import with_validation
from stages.pipeline.trained import check_maps
from stages.store.cache import Entry, RunStore


def infer_diff_step(store: RunStore, t, c, l, n_s: int, seed: int, ttc: bool, init: str | None = "paper",  # noqa: E741
                    distance: str = "pixel", whole: bool = True) -> Step:
    """The infer-diff Step of these maps, the variant (n_s, seed, test-time condition, start, distance) spelled
    out: the preset's may differ. whole=False: only these options (an empty t or l, a None start: infer-diff's
    own, from the run's preset)."""
    return Step("infer_diff", store.name, {"t": list(t), "c": list(c), "l": list(l), "n_s": n_s, "seed": seed,
                                           "test_time_condition": ttc, "init": init, "distance": distance}, whole=whole)


def _step(store: RunStore, p: FuseParams, cs, ts, ls) -> Step:
    """The infer-diff Step that makes the maps fuse asked for: t, c and l only where fuse asked for them (else
    infer-diff's own, from the run's preset, which fit the UNet the run trained)."""
    return infer_diff_step(store, ts, cs, ls, p.n_s, p.seed, p.test_time_condition, p.init, p.distance, whole=False)


def _accepted(store: RunStore, unet: Entry, p: FuseParams, cs) -> None:
    """The ConfigError infer-diff would refuse the quoted line with (its preset fills what fuse did not ask for),
    raised here instead of quoting a command that does not run."""
    from stages.pipeline.infer_diff import InferDiffParams
    from stages.config.presets import DEFAULT_PRESET, build

    q = build(InferDiffParams, "infer_diff", store.attr("preset") or DEFAULT_PRESET, t=tuple(p.t) or None,
              c=tuple(cs) or None, l=tuple(p.l) or None, n_s=p.n_s, seed=p.seed,
              test_time_condition=p.test_time_condition, init=p.init, distance=p.distance)
    check_maps(unet.params, q.t, q.c, q.l, q.n_s)


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


def variant_entries(store: RunStore, unet_key: str, n_s: int, ttc: bool, seed: int, init: str, distance: str,
                    c=(), t=(), l=()) -> dict[int, Entry]:  # noqa: E741
    """The complete, fresh infer-diff entries of the UNet unet_key and this variant holding the steps t and scales
    l, one per c (only the c given, when given), the newest when several t-lists: what every fusion reads."""
    index = store.current("index")
    found: dict[int, Entry] = {}
    for e in store.entries():
        q = e.params
        if (e.stage == "infer_diff" and e.is_complete and e.inputs == {"index": index.key, "train_diff": unet_key}
                and matches(q, n_s, ttc, seed, init, distance)
                and (not c or q["c"] in c) and set(t) <= set(q["t"]) and set(l) <= set(q["l"])):
            found[q["c"]] = e  # entries() is oldest first: the newest wins
    return dict(sorted(found.items()))


def diff_entries(store: RunStore, p: FuseParams) -> dict[int, Entry]:
    """The complete, fresh infer-diff entries of this variant, one per c (the newest when several t-lists)."""
    p = replace(p, init=newest_init(store, p))
    unet = store.current("train_diff")
    found = variant_entries(store, unet.key, p.n_s, p.test_time_condition, p.seed, p.init, p.distance,
                            p.c, p.t, p.l)
    missing = [c for c in p.c if c not in found]
    if missing or not found:
        want_c = missing or list(p.c)
        # maps this UNet cannot make are no cache miss: say why (the option at fault), quote no command
        check_maps(unet.params, p.t, want_c, p.l, p.n_s)
        _accepted(store, unet, p, want_c)
        what = " ".join(f"{k}={','.join(map(str, v))}" for k, v in (("c", want_c), ("t", p.t), ("l", p.l)) if v)
        raise CacheMissError(f"no cached diffusion heatmaps {'for ' + what if what else 'of this variant'} "
                             f"(n_s {p.n_s}, seed {p.seed}, start {p.init}, {p.distance} maps); make them with ",
                             _step(store, p, want_c, p.t, p.l))
    return found


def resolve(store: RunStore, p: FuseParams) -> tuple[FusionSettings, dict[int, Entry]]:
    """The settings fuse applies (given or common t and l; spatio-temporal fusion off keeps the last t at l = 1)
    and the infer-diff entries {c: entry} they read. gamma = 0 is base only and needs no diffusion maps."""
    if p.gamma == 0 and not p.image_gamma:
        return base_only(p), {}
    check_scales(p.distance, p.l)  # before the cache is read: the option is at fault, not the cache
    p = replace(p, init=newest_init(store, p))
    diffs = diff_entries(store, p)
    return settings_over(p, diffs), diffs


def base_only(p: FuseParams) -> FusionSettings:
    """The settings of a fusion without diffusion maps (gamma 0): H_base, normalised or multi-scale as p says."""
    ls = tuple(sorted(p.l or (1, 2, 4, 8))) if p.multiscale_base else ()
    return FusionSettings(gamma=0.0, filter=p.filter, l=ls, spatio_temporal=p.spatio_temporal,
                          multiscale_base=p.multiscale_base, n_s=p.n_s, test_time_condition=p.test_time_condition,
                          seed=p.seed, norm=p.norm)


def settings_over(p: FuseParams, diffs: dict[int, Entry]) -> FusionSettings:
    """The settings of fusion p over the infer-diff entries diffs ({c: entry}): the given or common t and l
    (fused_steps), and each c's chain (the t-list its reverse process ran over). fuse, tune and each of ablate's
    rows resolve through here. A CacheMissError or ConfigError when the entries cannot give them."""
    ts, ls = fused_steps(diffs, p.t, p.l, p.distance, p.spatio_temporal)
    chains = tuple((c, tuple(e.params["t"])) for c, e in diffs.items())
    own = {f.name: getattr(p, f.name) for f in fields(FuseParams)}  # (ablate's selection also holds its pool)
    return FusionSettings(**{**own, "t": tuple(ts), "c": tuple(diffs), "l": tuple(ls), "chains": chains})


def fused_steps(diffs: dict[int, Entry], t=(), l=(), distance: str = "pixel", spatio_temporal: bool = True  # noqa: E741
                ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(t, l) a fusion of the maps diffs reads: the given ones, else those every entry holds (t descending, the
    reverse process's order); feature maps have one scale, l = 1; spatio-temporal fusion off keeps only the last
    step at l = 1 (last_step_only). A CacheMissError or ConfigError when the entries cannot give them."""
    check_scales(distance, l)
    ts = sorted(t or set.intersection(*(set(e.params["t"]) for e in diffs.values())), reverse=True)
    ls = [1] if distance == "feature" else sorted(l or set.intersection(*(set(e.params["l"]) for e in diffs.values())))
    if not ts or not ls:
        raise CacheMissError("the cached infer-diff entries share no t or no l; pass ", Option("t"), "/", Option("l"),
                             " explicitly")
    if not spatio_temporal:
        check(1 in ls, "l", "spatio-temporal fusion off uses the l = 1 maps; include 1", tuple(ls))
        return last_step_only(ts)
    return tuple(ts), tuple(ls)


def check_scales(distance: str, l) -> None:  # noqa: E741
    check(distance == "pixel" or set(l) <= {1}, "l", "feature maps have one scale: l = 1", tuple(l))


def last_step_only(t) -> tuple[tuple[int], tuple[int]]:
    """Table 5's "w/o spatio-temporal fusion": only the last reverse step (the smallest t), at l = 1."""
    return (min(t),), (1,)


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
        raise ConfigError((f"{s.norm} needs the validation normals' statistics, and the run has no validation "
                          "normals; index again with ", with_validation(index), " (then rerun the stages after it)"),
                          "norm")

    def maps_of(pos: np.ndarray):
        hb = torch.from_numpy(base.array("h_base").get_orthogonal_selection((pos,)))
        return source_maps(hb, read_diff(diffs, s, pos) if s.uses_diffusion else None, size, s)

    return CrossFitStats.compute(maps_of, normals, row_folds(index, rec), s)


def row_folds(index: Entry, rec: np.ndarray) -> dict[int, int]:
    """{row position: fold} of the validation rows of the per-image arrays (stages.data.validation.folds)."""
    of_record = folds(index.attrs["records"])
    return {k: of_record[i] for k, i in enumerate(rec) if i in of_record}
