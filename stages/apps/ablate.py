"""The paper's Table 5 (ablations) from the run store: every row the cache can answer, without the UNet.

Rows (switches as in the paper: multi-scale base heatmap, spatio-temporal fusion, model condition, test-time
condition) plus the base model alone (UniAD, the reference), then what each of drdc's diffusion options adds
(OPTIONS: the training task, the start of the reverse process, the feature distance) and each fusion option
(FUSION_OPTIONS: high-pass or gated fusion, image scores from H_base). Fusion-only switches are computed in memory from
the cached infer-base and infer-diff heatmaps with the same code as `fuse` (`heatmaps.fuse_maps`) and scored as
`score` does; a row that needs another diffusion model (model condition off) or other diffusion heatmaps
(test-time condition off) is computed when matching entries are cached, else it names the commands that make
them. Nothing is written to the store.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from tqdm import tqdm

from stages.apps.choices import Selection  # noqa: F401 (torch-free: the command's defaults; re-exported)
from stages.errors import CacheMissError, DrdcError, Option, Step
from stages.method.anomaly_map import image_score, upsample
from stages.method.metrics import compute_metrics, mean_over_categories
from stages.pipeline.heatmaps import FusionSettings, fuse_maps, image_maps, read_diff
from stages.pipeline.reading import content
from stages.pipeline.selection import (FuseParams, base_only, infer_diff_step, newest_init, normal_stats, row_folds,
                                       settings_over, variant_entries)
from stages.pipeline.train_diff import TrainDiffParams
from stages.store.cache import Entry, RunStore
from stages.config.presets import PRESETS


@dataclass(frozen=True)
class Variant:
    name: str
    multiscale_base: bool
    spatio_temporal: bool
    model_condition: bool
    test_time_condition: bool
    task: str | None = None  # train-diff --task; None: the current UNet's
    init: str | None = None  # infer-diff --init; None: the selection's
    distance: str | None = None  # pixel | feature; None: the selection's
    fusion: str | None = None  # fuse --fusion; None: the selection's (gated on raw maps: normalised per pixel)
    image_gamma: float | None = None  # fuse --image-gamma; None: image scores from H_out


BASE = "base only (UniAD)"
BASE_MAHALANOBIS = "base only, + Mahalanobis residual norm"
# Table 5's columns, in the paper's order; the last one is the full method.
TABLE5: tuple[Variant, ...] = (
    Variant("w/o model condition", False, True, False, True),
    Variant("w/o test-time condition", False, True, True, False),
    Variant("w/o spatio-temporal fusion", False, False, True, True),
    Variant("+ multi-scale base heatmap", True, True, True, True),
    Variant("DRDC (full)", False, True, True, True),
)
# What each of drdc's own options adds to the paper's procedure (not in the paper; README "The diffusion branch").
OPTIONS: tuple[Variant, ...] = (
    Variant("DRDC, paper training and start", False, True, True, True, "paper", "paper", "pixel"),
    Variant("+ start ddad (no retraining)", False, True, True, True, "paper", "ddad", "pixel"),
    Variant("+ feature distance", False, True, True, True, "paper", "paper", "feature"),
    Variant("+ start ddad + feature distance", False, True, True, True, "paper", "ddad", "feature"),
    Variant("+ inpaint training (start noise)", False, True, True, True, "inpaint", "noise", "pixel"),
    Variant("+ inpaint training + feature distance", False, True, True, True, "inpaint", "noise", "feature"),
)
# What drdc's fusion options add to the full method's maps (fuse --fusion, --image-gamma; not in the paper).
FUSION_OPTIONS: tuple[Variant, ...] = (
    Variant("+ high-pass fusion", False, True, True, True, fusion="highpass"),
    Variant("+ gated fusion", False, True, True, True, fusion="gated"),
    Variant("+ image scores from H_base (image gamma 0)", False, True, True, True, image_gamma=0.0),
)


@dataclass
class Row:
    name: str
    variant: Variant | None  # None: the base model alone
    metrics: dict[str, dict] | None = None  # test split: {category | "mean": {metric: value or None}}
    val_metrics: dict[str, dict] | None = None  # validation images (held-out normals + synthetic defects)
    commands: list[Step] = field(default_factory=list)  # what makes a missing row computable, in order
    fusion: dict | None = None  # the resolved fuse settings of a computed row
    entries: dict[str, str] = field(default_factory=dict)  # store entries it read


_TASK_FIELDS = ("task", "chain", "t_max")  # what differs between the keys of the two training tasks
DEFAULT_CHAIN = TrainDiffParams.chain  # train-diff --task inpaint's own default t-list


def _task(params: dict) -> str:
    return params.get("task", "paper")


def train_diff_step(store: RunStore, params: dict, model_condition: bool, task: str | None = None,
                    note: str = "") -> Step:
    """The train-diff Step that makes an entry with these params (a whole step: every setting spelled out), with
    another task when given."""
    task = task or _task(params)
    q = {k: v for k, v in params.items() if k not in _TASK_FIELDS}
    q.update(model_condition=model_condition, task=task)
    if task == "inpaint":
        q["chain"] = params.get("chain", DEFAULT_CHAIN)
    else:
        q["t_max"] = params.get("t_max", 999)
    return Step("train_diff", store.name, q, note=note)


def _preset_maps(store: RunStore) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(t, c, l) that `drdc infer-diff` takes by default on this run (its preset's), so a printed command asks
    for grid sizes the run's UNet can inpaint."""
    from stages.pipeline.infer_diff import InferDiffParams
    from stages.config.presets import DEFAULT_PRESET, build

    p = build(InferDiffParams, "infer_diff", store.attr("preset") or DEFAULT_PRESET)
    return p.t, p.c, p.l


def _train_diff_entry(store: RunStore, current: Entry, model_condition: bool, task: str | None = None
                      ) -> Entry | None:
    """The complete train-diff entry with the current one's params but this model condition and task (newest)."""
    task = task or _task(current.params)
    want = {**current.params, "model_condition": model_condition}
    if want == current.params and task == _task(current.params):
        return current
    strip = lambda q: {k: v for k, v in q.items() if k not in _TASK_FIELDS}  # noqa: E731
    found = None
    for e in store.entries():
        if (e.stage == "train_diff" and e.is_complete and strip(e.params) == strip(want)
                and _task(e.params) == task and e.inputs == current.inputs):
            found = e
    return found


def _entries_of(store: RunStore, unet_key: str, sel: Selection, ttc: bool, init: str, distance: str
                ) -> dict[int, Entry]:
    return variant_entries(store, unet_key, sel.n_s, ttc, sel.seed, init, distance, sel.c, sel.t, sel.l)


def _resolve(diffs: dict[int, Entry], sel: Selection, v: Variant, init: str, distance: str
             ) -> FusionSettings | None:
    """fuse's settings for this row: the selection with the variant's switches, resolved as fuse resolves them
    (selection.settings_over); None when its maps cannot give them."""
    fusion = v.fusion or sel.fusion
    norm = "pixel" if fusion == "gated" and sel.norm == "none" else sel.norm  # the gate reads normalised maps
    row = replace(sel, spatio_temporal=v.spatio_temporal, multiscale_base=v.multiscale_base,
                  test_time_condition=v.test_time_condition, norm=norm, init=init, distance=distance, fusion=fusion,
                  image_gamma=v.image_gamma)
    try:
        return settings_over(row, diffs)
    except DrdcError:
        return None


def _category_metrics(index: Entry, base: Entry, c_feat: int, sel: Selection, fusion: FusionSettings | None,
                      diffs: dict[int, Entry], progress: bool, name: str, split: str = "test") -> dict[str, dict]:
    """score.run's metrics of one split for maps computed in memory, one category at a time (memory: one
    category's maps). With sel.norm, each row's statistics come from its own maps of the validation normals
    (test rows: every normal; validation rows: the other fold's, as fuse does)."""
    records, masked = index.attrs["records"], set(index.attrs["masked_categories"])
    rec = base.array("record")[:]
    size = int(index.params["image_size"])
    if fusion is None and sel.norm != "none":  # the base row, normalised like the others
        fusion = base_only(replace(sel, gamma=0.0, spatio_temporal=True, multiscale_base=False, test_time_condition=True))
    stats = normal_stats(index, base, diffs, fusion) if fusion is not None and fusion.norm != "none" else None
    fold = row_folds(index, rec)
    metrics: dict[str, dict] = {}
    for cat in tqdm(index.attrs["categories"], desc=f"{name} ({split})", unit="category", disable=not progress):
        pos = np.array([k for k, i in enumerate(rec) if records[i]["category"] == cat
                        and records[i]["split"] == split], dtype=np.int64)
        if not len(pos):
            continue
        labels = np.array([records[rec[k]]["label"] for k in pos], dtype=np.int64)
        masks = index.array("masks").get_orthogonal_selection((rec[pos],))
        hb = torch.from_numpy(base.array("h_base").get_orthogonal_selection((pos,)))
        h_diff = read_diff(diffs, fusion, pos) if fusion is not None and fusion.uses_diffusion else None
        st = stats.per_row([cat] * len(pos), [fold.get(int(k)) for k in pos]) if stats is not None else None
        with torch.no_grad():
            b, h_st, h_out = fuse_maps(hb, h_diff, size, fusion, c_feat, st)
            maps = upsample(h_out, masks.shape[-1])
            scored = upsample(image_maps(hb, b, h_st, h_out, fusion, c_feat, st), masks.shape[-1])
            v = content(index, rec[pos])  # padded images: only what shows the image is scored
            scores = image_score(scored, sel.pool, None if v is None else torch.from_numpy(v)).numpy()
        maps = maps.numpy()
        pixel = split == "val" or cat in masked  # every validation image has an exact (synthetic) mask
        metrics[cat] = compute_metrics(labels, scores, masks if pixel else None, maps if pixel else None, valid=v)
    if metrics:  # a run indexed without validation images has no validation table
        metrics["mean"] = mean_over_categories(metrics)
    return metrics


def _both(*args) -> tuple[dict, dict]:
    """(test metrics, validation metrics) of one row."""
    return _category_metrics(*args), _category_metrics(*args, split="val")


def _base_rows(store: RunStore, base: Entry, index: Entry, c_feat: int, sel: Selection, progress: bool) -> list[Row]:
    """The base model alone: Eq 2 as printed (L2 residual), and with drdc's Mahalanobis residual norm
    (infer-base --residual-norm mahalanobis) when that is the current map or is cached for the same model."""
    name = {"l2": BASE, "mahalanobis": BASE_MAHALANOBIS}
    norm = base.params.get("residual_norm", "l2")
    other_norm = "mahalanobis" if norm == "l2" else "l2"
    current = Row(name[norm], None, *_both(index, base, c_feat, sel, None, {}, progress, "base"),
                  entries={"infer_base": base.key})
    others = [e for e in store.entries() if e.stage == "infer_base" and e.status == "complete"
              and e.inputs == base.inputs and e.params.get("residual_norm", "l2") == other_norm]
    if others:
        e = others[-1]
        other = Row(name[other_norm], None, *_both(index, e, c_feat, sel, None, {}, progress, "base"),
                    entries={"infer_base": e.key})
    else:  # the stages validation chose; infer-base makes its entry current, the second line restores this one
        stages = base.params.get("residual_stages") or list(PRESETS["cpu"]["infer_base"]["residual_stages"])
        other = Row(name[other_norm], None, commands=[
            Step("infer_base", store.name, {"residual_norm": other_norm,
                                            **({"residual_stages": stages} if other_norm != "l2" else {})}),
            Step("infer_base", store.name, base.params, note="makes the current base map current again")])
    return [current, other] if norm == "l2" else [other, current]


def run(store: RunStore, sel: Selection = Selection(), progress: bool = True) -> list[Row]:
    """Every Table 5 row plus the base model's, in display order. Rows the cache cannot answer carry commands."""
    base = store.current("infer_base")
    extract = store.get("extract", base.inputs["extract"])
    index = store.current("index")
    c_feat = int(extract.attrs["channels"])
    rows = _base_rows(store, base, index, c_feat, sel, progress)
    if "train_diff" not in store.current_keys:
        steps = [Step("train_diff", store.name),
                 Step("ablate", store.name, note="again, once the diffusion model is trained")]
        return rows + [Row(v.name, v, commands=list(steps)) for v in TABLE5]
    unet = store.current("train_diff")
    if not unet.params["model_condition"]:
        raise CacheMissError(f"the current diffusion model {unet.key} was trained with ",
                             Option("model_condition", value=False), "; make the full model current with ",
                             train_diff_step(store, unet.params, True))
    t_def, c_def, l_def = _preset_maps(store)  # where nothing is cached: what `drdc infer-diff` would make
    c_def = tuple(unet.params.get("grid") or c_def)  # the grid sizes this UNet was trained on (its --size's)
    t_want = sel.t or t_def
    newest = newest_init(store, FuseParams())  # Table 5's rows: the start of the newest maps, as `fuse` takes
    ref = _entries_of(store, unet.key, sel, True, sel.init or newest, sel.distance)  # the maps fuse would read
    c_want = list(sel.c) or list(ref) or list(c_def)
    if ref:
        common_t = set.intersection(*(set(e.params["t"]) for e in ref.values()))
        common_l = set.intersection(*(set(e.params["l"]) for e in ref.values()))
        t_want = sel.t or tuple(sorted(common_t, reverse=True))
        l_want = sel.l or tuple(sorted(common_l))
    else:
        l_want = sel.l or l_def
    for v in (*TABLE5, *OPTIONS, *FUSION_OPTIONS):
        row = Row(v.name, v)
        rows.append(row)
        init = v.init or sel.init or newest
        if v.task not in (None, _task(unet.params)) and not v.init:
            init = "noise" if v.task == "inpaint" else "paper"
        distance = v.distance or sel.distance
        td = _train_diff_entry(store, unet, v.model_condition, v.task)
        back = train_diff_step(store, unet.params, True, note="makes the full model current again")
        if td is None:
            chain = (tuple(unet.params.get("chain", DEFAULT_CHAIN)) if v.task == "inpaint" == _task(unet.params)
                     else DEFAULT_CHAIN if v.task == "inpaint" else t_want)
            row.commands = [train_diff_step(store, unet.params, v.model_condition, v.task),
                            infer_diff_step(store, chain, c_want, l_want, sel.n_s, sel.seed, True, init,
                                               distance), back]
            continue
        diffs = _entries_of(store, td.key, sel, v.test_time_condition, init, distance)
        missing = [c for c in c_want if c not in diffs]
        t_row = tuple(td.params["chain"]) if _task(td.params) == "inpaint" else t_want
        if missing or not diffs:
            cmd = infer_diff_step(store, t_row, missing or c_want, l_want, sel.n_s, sel.seed,
                                     v.test_time_condition, init, distance)
            if td.key != unet.key:  # infer-diff reads the current UNet: make the ablated one current around it
                row.commands = [train_diff_step(store, td.params, v.model_condition), cmd, back]
            else:
                row.commands = [cmd]
            continue
        fusion = _resolve(diffs, sel, v, init, distance)
        if fusion is None:
            row.commands = [infer_diff_step(store, t_row, c_want, sorted({1, *l_want}), sel.n_s, sel.seed,
                                               v.test_time_condition, init, distance)]
            continue
        row.fusion = fusion.as_dict()
        row.entries = {"infer_base": base.key, "train_diff": td.key,
                       **{f"infer_diff@c={c}": e.key for c, e in diffs.items()}}
        row.metrics, row.val_metrics = _both(index, base, c_feat, sel, fusion, diffs, progress, v.name)
    return rows
