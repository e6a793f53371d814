"""Stage `calibrate`: image (and pixel) thresholds per category from normal images only.

The normal images are the index's validation normals (train/good images no trainer sees, stages.data.validation) and
any train images `train-base` held out (--holdout); they are scored through exactly the predict pipeline (base +
diffusion + fusion) and cached in the entry (`scores`, `maps`), so changing --fpr/--percentile only recomputes
quantiles.

Threshold = the (1 - fpr) quantile (numpy's linear interpolation) of the held-out normal scores of the category;
an image is anomalous when its score is above it, so at most a fraction fpr of those normals would be. A global
threshold (all categories pooled) serves images of unknown category. --pixel does the same over every pixel of
the held-out normals' fused maps. --on-test-labels instead picks F1-max thresholds on the test labels (for
reporting F1-max only): it is flagged in the entry and every later predict warns about it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import precision_recall_curve

from stages.apps.predict.predictor import Predictor
from stages.data.dataset import split_train
from stages.data.validation import validation_normals
from stages.errors import CacheMissError, ConfigError, Message, Option, Step, check
from stages.pipeline.chunked import chunks
from stages.pipeline.reading import category_maps, content
from stages.store.cache import Entry, RunStore
from stages.pipeline.params.data import with_validation
from stages.pipeline.runtime import StageResult

STAGE = "calibrate"


@dataclass(frozen=True)
class Thresholds:
    """Thresholds read back from a calibrate entry. A score strictly above a threshold is anomalous."""

    key: str
    image: dict[str, float]
    image_global: float
    pixel: dict[str, float] | None
    pixel_global: float | None
    on_test_labels: bool
    rule: str  # e.g. "fpr 0.01 on 12 held-out normal images"
    pixel_normal: dict[str, float] | None = None  # median normal pixel: the low end of the pictures' colour bar
    pixel_normal_global: float | None = None
    outside: float | None = None  # distance to the nearest trained category above which an image is of none of them
    warnings: tuple[str, ...] = ()  # what the normal images cannot support (e.g. an fpr below 1/n)

    def image_threshold(self, category: str | None) -> float:
        return self.image.get(category, self.image_global) if category else self.image_global

    def pixel_threshold(self, category: str | None) -> float | None:
        if self.pixel is None:
            return None
        return self.pixel.get(category, self.pixel_global) if category else self.pixel_global

    def pixel_normal_level(self, category: str | None) -> float | None:
        if self.pixel_normal is None:
            return None
        return self.pixel_normal.get(category, self.pixel_normal_global) if category else self.pixel_normal_global


def quantile_of(fpr: float | None, percentile: float | None) -> tuple[float, str]:
    """(q in [0, 1], rule text) from exactly one of --fpr / --percentile (fpr 0.01 when neither)."""
    if fpr is not None and percentile is not None:
        raise ConfigError("give one of them, not both", "fpr/percentile")
    if percentile is not None:
        check(0.0 < percentile <= 100.0, "percentile", "must be in (0, 100]", percentile)
        return percentile / 100.0, f"percentile {percentile:g}"
    fpr = 0.01 if fpr is None else fpr
    check(0.0 <= fpr < 1.0, "fpr", "must be in [0, 1)", fpr)
    return 1.0 - fpr, f"fpr {fpr:g}"


def quantile_thresholds(values: dict[str, np.ndarray], q: float) -> tuple[dict[str, float], float]:
    """Per-category q-quantile (numpy 'linear') and the pooled one. values: {category: (n,) scores or pixels}."""
    per = {c: float(np.quantile(v, q)) for c, v in values.items()}
    return per, float(np.quantile(np.concatenate(list(values.values())), q))


def f1max_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold of maximal F1 on (labels, scores), shifted one float down so `score > threshold` flags
    exactly the images sklearn's `score >= t` does."""
    precision, recall, thr = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(np.nextafter(thr[int(np.argmax(f1[:-1]))], -np.inf))


def holdout_records(store: RunStore) -> np.ndarray:
    """Record indices of the normal images no trainer saw: the index's validation normals, and the train
    images the current train-base entry held out (--holdout)."""
    tb = store.current("train_base")
    index = store.current("index")
    q = tb.params
    _, held = split_train(index.attrs["records"], q["holdout"], q["seed"])
    val = sorted(set(held) | set(validation_normals(index.attrs["records"])))
    if not val:
        raise ConfigError(("the run has no validation normals and the base model trained on every "
                           f"train/good image (holdout {q['holdout']}), so no normal image is left to calibrate on; "
                           "index again with ", with_validation(index), " (then rerun the stages after it)"),
                          "val_fraction")
    return np.asarray(val, dtype=np.int64)


def _inputs(pred: Predictor) -> dict[str, str]:
    d = {"train_base": pred.train_base.key}
    if pred.train_diff is not None:
        d["train_diff"] = pred.train_diff.key
    return d


def run(store: RunStore, pred: Predictor, fpr: float | None = None, percentile: float | None = None,
        pixel: bool = False, progress: bool = True) -> tuple[StageResult, Thresholds]:
    """Score the held-out normal images (cached), then set their quantile thresholds in the entry's attrs."""
    t0 = time.perf_counter()
    q, rule = quantile_of(fpr, percentile)
    rec = holdout_records(store)
    index = pred.index
    entry, cached = store.begin(STAGE, {"normals": "train_base holdout", "settings": pred.settings()},
                                _inputs(pred))
    n, s = len(rec), pred.size
    if not cached:
        entry.require_array("record", (n,), "int64")[:] = rec
        scores = entry.require_array("scores", (n,), "float32")
        maps = entry.require_array("maps", (n, s, s), "float32")
        outside = entry.require_array("outside", (n,), "float32") if pred.residual is not None else None
        images = index.array("images")
        for a, b in chunks([entry], n, "calibrate", progress):
            out = pred.run(images.get_orthogonal_selection((rec[a:b],)), rec[a:b],
                           [index.attrs["records"][i]["category"] for i in rec[a:b]],
                           content(index, rec[a:b]))  # padded images: as predict scores them
            scores[a:b] = out.scores
            maps[a:b] = out.h_out
            if outside is not None:
                outside[a:b] = out.outside
    records = index.attrs["records"]
    cats = np.array([records[i]["category"] for i in rec])
    all_scores = entry.array("scores")[:]
    by_cat = {c: all_scores[cats == c] for c in index.attrs["categories"] if (cats == c).any()}
    image, image_global = quantile_thresholds(by_cat, q)
    pix = pix_global = pix_normal = pix_normal_global = None
    if pixel:
        m = entry.array("maps")
        def pixels(c: str) -> np.ndarray:  # the normal pixels that show the image (not a padded image's fill)
            rows = np.flatnonzero(cats == c)
            v = m.get_orthogonal_selection((rows,))
            shown = content(index, rec[rows])
            return v.ravel() if shown is None else v[shown]

        normal_pixels = {c: pixels(c) for c in by_cat}
        pix, pix_global = quantile_thresholds(normal_pixels, q)
        pix_normal, pix_normal_global = quantile_thresholds(normal_pixels, 0.5)  # the pictures' colour scale
    rule = f"{rule} on {n} held-out normal images"
    th = {"rule": rule, "quantile": q, "image": image, "image_global": image_global, "pixel": pix,
          "pixel_global": pix_global, "pixel_normal": pix_normal, "pixel_normal_global": pix_normal_global,
          "n_normal": {c: int(len(v)) for c, v in by_cat.items()},
          "outside": _outside_threshold(entry, pred, rec), "warnings": unsupported(q, by_cat),
          "on_test_labels": False}
    entry.update(thresholds=th, mode=pred.mode)  # also on a cached entry: another --fpr, same scores
    entry.complete()
    return (StageResult(STAGE, entry.key, cached, time.perf_counter() - t0, rule),
            _thresholds(entry.key, th))


def unsupported(q: float, by_cat: dict[str, np.ndarray]) -> list[str]:
    """Where a quantile asks for more than the normal images can tell: with n normals the largest score is the
    (1 - 1/n) quantile, so a false-positive rate below 1/n is an extrapolation, not a measurement."""
    out = []
    for c, v in by_cat.items():
        if 1.0 - q < 1.0 / len(v):
            out.append(f"{c}: a false-positive rate of {1 - q:.3g} cannot be supported by {len(v)} normal images "
                       f"(1/{len(v)} = {1 / len(v):.3g}); its threshold sits at the highest normal score")
    return out


def outside_threshold(normals: np.ndarray) -> float:
    """The distance to the nearest trained category above which an image looks like none of them: twice as far
    above the held-out normals' median as the farthest normal (on the demo run, with real magnetic tiles as the
    unseen kind: every unseen image above it, no test image of a trained category)."""
    med = float(np.median(normals))
    return med + 2.0 * (float(normals.max()) - med)


def _outside_threshold(entry: Entry, pred: Predictor, rec: np.ndarray) -> float | None:
    """outside_threshold of the held-out normals (their distances are cached in the entry; an entry made before
    them gets them now, by the base map alone). None without the residual Gaussians (Eq 2's base map)."""
    if pred.residual is None:
        return None
    if not entry.has("outside"):
        images = pred.index.array("images")
        entry.require_array("outside", (len(rec),), "float32")[:] = np.concatenate(
            [pred.outside(images.get_orthogonal_selection((rec[a:a + 32],))) for a in range(0, len(rec), 32)])
    return outside_threshold(entry.array("outside")[:])


def run_on_test_labels(store: RunStore, pred: Predictor, pixel: bool = False) -> tuple[StageResult, Thresholds]:
    """F1-max thresholds chosen on the TEST labels from the run's stored test scores (and fused maps). Only for
    reporting F1-max: the entry is flagged and predict warns whenever it uses it."""
    t0 = time.perf_counter()
    if pred.fusion is not None and pred.fusion.source.endswith("options"):
        raise ConfigError(("reads the run's stored test scores; drop the fusion options or run ",
                           Step("fuse", store.name), " and ",
                           Step("score", store.name, {"source": "fuse"}, whole=False), " with them first"),
                          "on_test_labels")
    src_stage, array = ("fuse", "maps") if pred.mode == "fuse" else ("infer_base", "h_base")
    src = store.current(src_stage)
    score = next((e for e in reversed(list(store.entries())) if e.stage == "score" and e.is_complete
                  and e.inputs.get(src_stage) == src.key and e.params.get("pool") == pred.pool), None)
    if score is None:
        raise CacheMissError(f"no test scores of the current {src_stage} result; run ",
                             Step("score", store.name, {"source": pred.mode}, whole=False), " first")
    index = pred.index
    entry, _ = store.begin(STAGE, {"normals": "test labels (F1-max)", "settings": pred.settings()},
                           {**_inputs(pred), "score@test": score.key})
    records, scores, rec = index.attrs["records"], score.array("scores")[:], score.array("record")[:]
    cats = np.array([records[i]["category"] for i in rec])
    labels = np.array([records[i]["label"] for i in rec])
    image = {c: f1max_threshold(labels[cats == c], scores[cats == c]) for c in dict.fromkeys(cats)
             if len(set(labels[cats == c])) == 2}
    pix = None
    if pixel:
        masked = set(index.attrs["masked_categories"])
        pix = {}
        for c in image:
            if c in masked:
                pos, _, masks, maps = category_maps(index, src, array, c)
                shown = content(index, src.array("record")[:][pos])
                pix[c] = (f1max_threshold(masks.ravel(), maps.ravel()) if shown is None
                          else f1max_threshold(masks[shown], maps[shown]))
    th = {"rule": f"F1-max on the test labels of {len(rec)} images (score {score.key})", "image": image,
          "image_global": f1max_threshold(labels, scores), "pixel": pix,
          "pixel_global": float(np.median(list(pix.values()))) if pix else None,
          "n_normal": {}, "on_test_labels": True}
    entry.update(thresholds=th, mode=pred.mode)
    entry.complete()
    return StageResult(STAGE, entry.key, False, time.perf_counter() - t0, th["rule"]), _thresholds(entry.key, th)


def _thresholds(key: str, th: dict) -> Thresholds:
    return Thresholds(key, th["image"], th["image_global"], th["pixel"], th["pixel_global"], th["on_test_labels"],
                      th["rule"], th.get("pixel_normal"), th.get("pixel_normal_global"), th.get("outside"),
                      tuple(th.get("warnings", ())))


def current(store: RunStore, pred: Predictor) -> tuple[Thresholds | None, Message | None]:
    """(thresholds, note) for predict: None with a note saying what to run when there is no usable
    calibration (none, stale, or made for other settings); a warning note when they came from test labels."""
    key = store.current_keys.get(STAGE)
    fix = ("run ", Step(STAGE, store.name, getattr(pred, "options", {}), whole=False))
    if key is None:
        return None, ("uncalibrated: no thresholds in the run; ", *fix)
    e = store.get(STAGE, key)
    if e is None or not e.is_complete:
        return None, (f"uncalibrated: the calibration {key} is incomplete; ", *fix)
    try:
        store.check_fresh(e)
    except CacheMissError:
        return None, (f"uncalibrated: the calibration {key} predates the current models; ", *fix)
    if e.params["settings"] != pred.settings():
        return None, (f"uncalibrated: the calibration {key} was made with other settings; ", *fix)
    th = _thresholds(e.key, e.attrs["thresholds"])
    note = ("WARNING: thresholds were chosen on the test labels (", Option("on_test_labels", STAGE),
            "); use them only to report F1-max, not as a deployment threshold") if th.on_test_labels else None
    return th, note


def entry_thresholds(e: Entry) -> Thresholds:
    return _thresholds(e.key, e.attrs["thresholds"])


