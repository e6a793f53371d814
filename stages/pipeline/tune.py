"""Stage `tune`: choose the fusion settings on the validation images, from the cache, without the UNet.

Only validation rows are read (held-out normals and their synthetic-defect copies, stages.data.validation): never a
test label, mask or map. The search is a coordinate ascent from the paper's settings over the axes
variant (the cached infer-diff starts and distances of the current UNet: --init, pixel or feature maps),
normalisation, gamma (0 = base only, 1 = diffusion only), the fusion kind (add, highpass, gated; each tried with
every normalisation, since the gate reads normalised maps) and its gate, m,
the t / c / l subsets of the cached maps, and the image score's own gamma (none: scored on H_out itself):
each axis in turn takes its best value with the others fixed, for `rounds` passes. Every trial is recorded
with its metrics (mean over categories, and per defect kind, so that a ranking can be checked across kinds).

Objective: p_auroc, p_aupro, i_auroc, or mean (of the three). For speed the trials are scored at `eval_size`
(maps average-pooled, masks max-pooled: a pixel is anomalous if any pixel it covers is); the chosen settings
are then fused and scored exactly by `fuse` and `score`. Normalisation statistics are cross-fitted: a
validation row is normalised with the statistics of the other fold's normals (stages.data.validation.folds), never
with statistics its own image (or the normal its defect was painted on) helped make.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stages.data.validation import folds, is_validation_normal, kind_of
from stages.errors import CacheMissError, ConfigError
from stages.method.anomaly_map import image_score
from stages.method.fusion import GATE
from stages.method.metrics import image_auroc, localisation
from stages.pipeline.heatmaps import (CrossFitStats, FusionSettings, array_name, combine, select,
                                      source_maps)
from stages.pipeline.params import OBJECTIVES, TuneParams  # noqa: F401 (torch-free, re-exported)
from stages.pipeline.params.data import with_validation
from stages.pipeline.reading import content
from stages.pipeline.selection import FuseParams, resolve
from stages.store.cache import Entry, RunStore
from stages.pipeline.runtime import StageResult

STAGE = "tune"
AXES = ("variant", "norm", "gamma", "fusion", "gate", "filter", "t", "c", "l", "image_gamma")


def subsets(values: tuple[int, ...], descending: bool = False) -> list[tuple[int, ...]]:
    """Candidate subsets of cached t / c / l: all, each single value, and the two halves."""
    v = tuple(sorted(values, reverse=descending))
    out = [v, *[(x,) for x in v]]
    if len(v) >= 4:
        out += [v[: len(v) // 2], v[len(v) // 2 :]]
    return list(dict.fromkeys(out))


class ValidationSet:
    """The validation rows' cached maps, labels and masks, held in memory once for every trial.

    splits: the rows held; tune holds ("val",) only and never reads a test row. A measurement of how well
    validation ranks settings (benchmarks/rank_correlation.py) holds ("val", "test") and evaluates each split
    apart, the test rows normalised with the statistics of every validation normal (as fuse does)."""

    def __init__(self, store: RunStore, p: TuneParams, splits: tuple[str, ...] = ("val",), progress: bool = False):
        self.base = store.current("infer_base")
        extract = store.get("extract", self.base.inputs["extract"])
        self.index = store.get("index", extract.inputs["index"])
        self.c_feat = int(extract.attrs["channels"])
        self.size = int(self.index.params["image_size"])
        records = self.index.attrs["records"]
        rec = self.base.array("record")[:]
        self.pos = np.array([k for k, i in enumerate(rec) if records[i]["split"] in splits], dtype=np.int64)
        if not any(records[rec[k]]["label"] == 1 and records[rec[k]]["split"] == "val" for k in self.pos):
            raise ConfigError(("the run has no validation images with synthetic defects to tune on; index again "
                               "with ", with_validation(self.index), " (then rerun the stages after it)"))
        recs = [records[rec[k]] for k in self.pos]  # the held rows only, from here on
        self.split = np.array([r["split"] for r in recs])
        self.cats = [r["category"] for r in recs]
        self.labels = np.array([r["label"] for r in recs], dtype=np.int64)
        # the defect kind of an anomalous row: validation, the synthetic kind; test, "<category>/<defect folder>"
        self.kinds = np.array([kind_of(r) or "" if r["split"] == "val" else
                               f"{r['category']}/{r['defect']}" if r["label"] == 1 else "" for r in recs])
        self.masked = set(self.index.attrs["masked_categories"])
        self.normal = {c: np.flatnonzero([r["category"] == c and is_validation_normal(r) for r in recs])
                       for c in dict.fromkeys(self.cats)}
        of_record = folds(records)
        self.fold = {j: of_record[rec[k]] for j, k in enumerate(self.pos) if rec[k] in of_record}
        masks = torch.from_numpy(self.index.array("masks").get_orthogonal_selection((rec[self.pos],))).float()
        self.factor = max(1, self.size // p.eval_size)
        self.masks = F.max_pool2d(masks[:, None], self.factor)[:, 0].numpy().astype(bool)
        v = content(self.index, rec[self.pos])  # padded images: score only what shows the image
        self.valid = None if v is None else torch.from_numpy(v)
        self.valid_small = (None if v is None else
                            (F.avg_pool2d(self.valid[:, None].float(), self.factor)[:, 0] >= 0.5).numpy())
        self.h_base = torch.from_numpy(self.base.array("h_base").get_orthogonal_selection((self.pos,)))
        try:  # the paper's fusion of every cached map is where the search starts
            self.start, self.diffs = resolve(store, FuseParams())
        except CacheMissError:  # no diffusion maps: tune the base map alone
            self.start, self.diffs = resolve(store, FuseParams(gamma=0.0))
        # every cached variant (start, distance) of the current UNet, each with its own t / c / l
        self.variants: dict[tuple[str, str], tuple[FusionSettings, dict[int, Entry]]] = {}
        if self.diffs:
            for v in _cached_variants(store, self.start):
                try:
                    self.variants[v] = resolve(store, FuseParams(init=v[0], distance=v[1]))
                except CacheMissError:  # e.g. its c have no t or l in common
                    continue
        entries = [(v, c, st, e) for v, (st, ds) in self.variants.items() for c, e in ds.items()]
        self.h_diff_all = {(v, c): torch.from_numpy(e.array(array_name(st)).get_orthogonal_selection((self.pos,)))
                           for v, c, st, e in tqdm(entries, desc="validation maps", unit="entry",
                                                   disable=not progress)}  # float16 as stored
        self._st: dict = {}

    def sources(self, s: FusionSettings) -> tuple[torch.Tensor, torch.Tensor | None]:
        """source_maps of the validation rows for the (variant, t, c, l) selection (cached per selection)."""
        key = (s.init, s.distance, s.t, s.c, s.l, s.multiscale_base, s.uses_diffusion)
        if key not in self._st:
            v = (s.init, s.distance)
            hd = (torch.cat([select(self.h_diff_all[v, c], self.variants[v][1][c].params, s) for c in s.c], 1)
                  if s.uses_diffusion else None)
            self._st = {key: source_maps(self.h_base, hd, self.size, s)}  # one selection at a time: memory
        return self._st[key]

    def evaluate(self, s: FusionSettings, pool: int, split: str = "val") -> dict:
        """Metrics of settings s on one held split: mean over categories, per category, and per defect kind
        (validation: the synthetic kinds; test: each category's defect folders, as "<category>/<folder>")."""
        hb, h_st = self.sources(s)
        stats = None
        if s.norm != "none":  # cross-fitted: a row is normalised by the other fold's normals
            cf = CrossFitStats.compute(lambda i: (hb[i], None if h_st is None else h_st[i]), self.normal,
                                       self.fold, s)
            stats = cf.per_row(self.cats, [self.fold.get(k) for k in range(len(self.cats))])
        with torch.no_grad():
            feat = self.h_base.shape[-1]
            h_out = combine(hb, h_st, s, self.c_feat, stats, feat)
            h_img = (h_out if not s.scores_own_map
                     else combine(hb, h_st, s.for_image(), self.c_feat, stats, feat))  # image_maps' rule
            scores = image_score(h_img, pool, self.valid).numpy()
            small = F.avg_pool2d(h_out[:, None], self.factor)[:, 0].numpy() if self.factor > 1 else h_out.numpy()
        cats = np.array(self.cats)
        per_kind: dict[str, list[dict]] = {}
        by_category = {}
        for c in dict.fromkeys(self.cats):
            sel = (cats == c) & (self.split == split)
            if not sel.any():
                continue
            vs = lambda rows: None if self.valid_small is None else self.valid_small[rows]  # noqa: E731
            pixel = split == "val" or c in self.masked  # every validation image has a (synthetic) mask
            by_category[c] = _metrics(self.labels[sel], scores[sel], self.masks[sel], small[sel], vs(sel), pixel)
            for k in sorted(set(self.kinds[sel & (self.labels == 1)])):
                ks = sel & ((self.labels == 0) | (self.kinds == k))
                per_kind.setdefault(k, []).append(_metrics(self.labels[ks], scores[ks], self.masks[ks], small[ks],
                                                           vs(ks), pixel))
        return {"metrics": _mean(list(by_category.values())), "by_kind": {k: _mean(v) for k, v in per_kind.items()},
                "by_category": by_category}


def _metrics(labels, scores, masks, maps, valid=None, pixel: bool = True) -> dict:
    p_auroc, p_aupro = localisation(masks, maps, valid=valid) if pixel else (None, None)
    out = {"i_auroc": image_auroc(labels, scores), "p_auroc": p_auroc, "p_aupro": p_aupro}
    out["mean"] = float(np.mean([v for v in out.values() if v is not None]))
    return out


def _mean(rows: list[dict]) -> dict:
    """Each metric's mean over the rows that have it (a category without masks has no pixel metrics)."""
    return {k: (float(np.mean(v)) if (v := [r[k] for r in rows if r[k] is not None]) else None) for k in rows[0]}


def _cached_variants(store: RunStore, s: FusionSettings) -> list[tuple[str, str]]:
    """(init, distance) of every complete infer-diff entry of the current UNet with s's n_s, test-time condition
    and seed, in the order first made (an entry with feature maps gives both distances)."""
    index, unet = store.current("index"), store.current("train_diff")
    out: list[tuple[str, str]] = []
    for e in store.entries():
        q = e.params
        if (e.stage == "infer_diff" and e.is_complete and e.inputs == {"index": index.key, "train_diff": unet.key}
                and q["n_s"] == s.n_s and q["test_time_condition"] == s.test_time_condition and q["seed"] == s.seed):
            init = q.get("init", "paper")
            out += [(init, "pixel")] + ([(init, "feature")] if q.get("distance") == "feature" else [])
    return list(dict.fromkeys(out))


def _label(s: FusionSettings) -> dict:
    return {"init": s.init, "distance": s.distance, "norm": s.norm, "gamma": s.gamma, "filter": s.filter,
            "t": list(s.t), "c": list(s.c), "l": list(s.l), "fusion": s.fusion,
            **({"gate": s.gate} if s.fusion == "gated" else {}),
            "image_gamma": s.image_gamma if s.scores_own_map else None}


def _valid(s: FusionSettings) -> bool:
    """Settings fuse accepts (None: refused when made, e.g. the gated fusion on raw maps); an image gamma is its
    own only with maps."""
    return s is not None and (s.image_gamma is None or s.scores_own_map)


def _fixed(vs: ValidationSet, p: TuneParams) -> dict[str, list]:
    """The axes whose values do not depend on the other settings."""
    return {"norm": list(p.norms), "gamma": list(p.gammas) if vs.diffs else [0.0],
            "filter": list(p.filters) if vs.diffs else [vs.start.filter],
            "fusion": list(dict.fromkeys(("add", *p.fusions))) if vs.diffs else ["add"],  # Eq 19 first
            "image_gamma": [None, *p.image_gammas] if vs.diffs else [None]}


def trial_bound(vs: ValidationSet, p: TuneParams) -> int:
    """An upper bound of the trials `search` scores (the total of its progress bar): the start, then per round
    every value of every axis (a value tried before is not scored again, and the search stops early when a round
    changes nothing)."""
    fixed = _fixed(vs, p)

    def most(axis: str) -> int:  # the most values an axis can offer, whatever the settings it starts from
        if axis in fixed:
            return len(fixed[axis])
        if axis == "gate":
            return len(p.gates)
        if not vs.diffs:
            return 1
        if axis == "variant":
            return len(vs.variants)
        return max(len(subsets(own.t, descending=True) if axis == "t" else subsets(getattr(own, axis)))
                   for own, _ in vs.variants.values())

    n_norms = len(fixed["norm"])  # the fusion axis tries each kind with each normalisation
    return 1 + p.rounds * sum(most(axis) * (n_norms if axis == "fusion" else 1) for axis in AXES)


def search(vs: ValidationSet, p: TuneParams, progress: bool = True) -> list[dict]:
    """Every trial of the coordinate ascent, in the order tried: {settings, metrics, by_kind}."""
    start = vs.start
    fixed = _fixed(vs, p)

    def options(s: FusionSettings, axis: str) -> list:
        if axis in fixed:
            return fixed[axis]
        if axis == "gate":
            return list(p.gates) if s.fusion == "gated" else []
        if not vs.diffs:
            return [()]
        if axis == "variant":
            return list(vs.variants)
        own = vs.variants[s.init, s.distance][0]  # this variant's cached t / c / l
        return subsets(own.t, descending=True) if axis == "t" else subsets(getattr(own, axis))

    trials: dict[str, dict] = {}

    def score(s: FusionSettings) -> float:
        key = repr(_label(s))
        if key not in trials:
            trials[key] = {"settings": _label(s), **vs.evaluate(s, p.pool)}
            bar.update(1)
        return trials[key]["metrics"][p.objective]

    best = start
    for axis, values in fixed.items():  # the start inside the search space (e.g. --gammas 1: no trial at 0.9)
        if getattr(best, axis) not in values and _valid(moved := _with(best, axis, values[0], vs)):
            best = moved
    with tqdm(total=trial_bound(vs, p), desc="tune (at most)", unit="trial", disable=not progress) as bar:
        score(best)
        for _ in range(p.rounds):
            before = best
            for axis in AXES:
                values = options(best, axis)
                if not values:  # a single value still applies: e.g. --gammas 1 moves the paper's 0.9 to 1
                    continue
                cands = [c for v in values if _valid(c := _with(best, axis, v, vs))]
                if axis == "fusion":  # each fusion kind with its own best normalisation (the gate reads one)
                    cands = [c for v in values for n in fixed["norm"]
                             if _valid(c := _with(best, axis, v, vs, norm=n))]
                if cands:
                    best = max(cands, key=score)  # ties: the first, i.e. the order given (paper's values first)
            if best == before:
                break
        bar.total = bar.n  # done: the bound was not reached
        bar.refresh()
    return list(trials.values())


def _with(s: FusionSettings, axis: str, v, vs: ValidationSet, **also) -> FusionSettings | None:
    """s with one axis moved to v (and the settings in `also`); None when FusionSettings refuses the result."""
    try:
        return _moved(s, axis, v, vs, also)
    except ConfigError:
        return None


def _moved(s: FusionSettings, axis: str, v, vs: ValidationSet, also: dict) -> FusionSettings:
    if axis == "variant":  # that variant's maps, with this trial's norm, gamma, m and (where cached) t / c / l
        own = vs.variants[v][0]
        keep = lambda mine, theirs: mine if mine and set(mine) <= set(theirs) else theirs  # noqa: E731
        c = keep(s.c, own.c)
        return replace(own, **{"norm": s.norm, "gamma": s.gamma, "filter": s.filter, "fusion": s.fusion,
                               "gate": s.gate, "image_gamma": s.image_gamma, "t": keep(s.t, own.t), "c": c,
                               "l": own.l if own.distance == "feature" else keep(s.l, own.l),
                               "chains": tuple(ch for ch in own.chains if ch[0] in c), **also})
    if axis == "c":
        return replace(s, c=tuple(v), chains=tuple(ch for ch in s.chains if ch[0] in v), **also)
    return replace(s, **{axis: tuple(v) if isinstance(v, (list, tuple)) else v, **also})


def best_trial(trials: list[dict], objective: str) -> dict:
    return max(trials, key=lambda r: r["metrics"][objective])


def rationale(trials: list[dict], objective: str) -> dict:
    """Why the best trial won: its validation objective beside the best base-only trial's (gamma 0, image scores
    from H_base too) and the best diffusion-only one's (gamma 1), each None when the search did not try it."""
    def best(keep) -> float | None:
        rows = [r for r in trials if keep(r["settings"])]
        return max(r["metrics"][objective] for r in rows) if rows else None

    return {"objective": objective, "chosen": best_trial(trials, objective)["metrics"][objective],
            "base_only": best(lambda q: q["gamma"] == 0 and not q.get("image_gamma")),
            "diffusion_only": best(lambda q: q["gamma"] == 1 and q.get("image_gamma") in (None, 1))}


def fuse_params(trial: dict, diffs: dict[int, Entry]) -> FuseParams:
    """The `drdc fuse` params of a trial (what becomes current)."""
    q = trial["settings"]
    first = next(iter(diffs.values())).params if diffs else {"n_s": 2, "test_time_condition": True, "seed": 0}
    return FuseParams(gamma=q["gamma"], filter=q["filter"], t=tuple(q["t"]), c=tuple(q["c"]), l=tuple(q["l"]),
                      n_s=first["n_s"], test_time_condition=first["test_time_condition"], seed=first["seed"],
                      norm=q["norm"], init=q.get("init", "paper"), distance=q.get("distance", "pixel"),
                      fusion=q.get("fusion", "add"), gate=q.get("gate", GATE), image_gamma=q.get("image_gamma"))


def run(store: RunStore, p: TuneParams, progress: bool = True) -> tuple[StageResult, list[dict], FuseParams]:
    """Search, record every trial in a `tune` entry, and return the best trial's fuse params (the caller makes
    them current with `fuse` and `score`)."""
    t0 = time.perf_counter()
    vs = ValidationSet(store, p, progress=progress)
    inputs = {"infer_base": vs.base.key, **{f"infer_diff@{v[0]},c={c}": e.key for v, (_, ds) in vs.variants.items()
                                            if v[1] == "pixel" for c, e in ds.items()}}
    params = {"objective": p.objective, "norms": list(p.norms), "gammas": list(p.gammas),
              "filters": list(p.filters), "fusions": list(p.fusions), "gates": list(p.gates),
              "image_gammas": list(p.image_gammas), "rounds": p.rounds, "eval_size": p.eval_size, "pool": p.pool}
    entry, cached = store.begin(STAGE, params, inputs)
    if cached:
        trials = entry.attrs["trials"]
    else:
        trials = search(vs, p, progress)
        entry.complete(trials=trials, objective=p.objective, n_val=int(vs.pos.size),
                       n_val_anomalous=int(vs.labels.sum()))
    best = best_trial(trials, p.objective)
    m = best["metrics"]
    q = best["settings"]
    summary = (f"{len(trials)} trials on {vs.pos.size} validation images; best {p.objective} "
               f"{100 * m[p.objective]:.1f}: init={q.get('init')} distance={q.get('distance')} norm={q['norm']} gamma={q['gamma']} m={q['filter']} "
               f"t={q['t']} c={q['c']} l={q['l']} fusion={q.get('fusion', 'add')}"
               + (f" gate={q['gate']}" if q.get("gate") else "")
               + (f" image_gamma={q['image_gamma']}" if q.get("image_gamma") is not None else ""))
    return (StageResult(STAGE, entry.key, cached, time.perf_counter() - t0, summary), trials,
            fuse_params(best, vs.diffs))
