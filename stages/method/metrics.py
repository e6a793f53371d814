"""Threshold-free anomaly-detection metrics, computed per category.

Image level: ``labels`` (N,) in {0,1} (1 = anomalous), ``scores`` (N,) float.
Pixel level: ``masks`` (N,H,W) bool or {0,1}, ``maps`` (N,H,W) float, all images of the category (good ones included).
numpy in, Python floats out. Bad data raises ``DataError`` (one line), a bad ``fpr_limit`` ``ConfigError``.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from stages.errors import ConfigError, DataError

METRIC_NAMES: tuple[str, ...] = ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "p_aupro")

# MVTec's official pro_curve_util.py labels each ground-truth map with scipy's label(gt, np.ones((3, 3))), i.e.
# 8-connectivity. Using a 3-D structure whose only non-zero plane is the middle one gives exactly that per image,
# labels the whole (N,H,W) stack in one call, and never joins regions of different images.
_STRUCTURE_8 = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_8[1] = True


# ---------------------------------------------------------------------------------------------------- validation
def _check_ndim(name: str, a: np.ndarray, ndim: int, layout: str) -> None:
    if a.ndim != ndim:
        raise DataError(f"{name}: expected a {ndim}-D array {layout}, got shape {a.shape}")
    if a.size == 0:
        raise DataError(f"{name}: expected a non-empty array {layout}, got shape {a.shape}")


def _check_same_shape(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise DataError(f"{name_b}: expected shape {a.shape} (same as {name_a}), got {b.shape}")


def _check_finite(name: str, a: np.ndarray) -> np.ndarray:
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise DataError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating):
        bad = a.size - int(np.count_nonzero(np.isfinite(a)))
        if bad:
            raise DataError(f"{name}: expected finite values, found {bad} NaN/inf of {a.size}")
    return a


def _check_binary(name: str, a: np.ndarray) -> np.ndarray:
    """Return ``a`` as bool; accepts bool or values in {0, 1} of any numeric dtype (not 0/255)."""
    if a.dtype == bool:
        return a
    _check_finite(name, a)
    is_bin = (a == 0) | (a == 1)
    if not is_bin.all():
        found = np.unique(a[~is_bin])
        shown = ", ".join(f"{v:g}" for v in found[:5]) + (", ..." if found.size > 5 else "")
        raise DataError(f"{name}: expected binary values (bool or 0/1), found {found.size} other value(s): {shown}")
    return a.astype(bool)


def _image_inputs(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels), np.asarray(scores)
    _check_ndim("labels", labels, 1, "(N,)")
    _check_ndim("scores", scores, 1, "(N,)")
    _check_same_shape("labels", labels, "scores", scores)
    return _check_binary("labels", labels), _check_finite("scores", scores)


def _pixel_inputs(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks, maps = np.asarray(masks), np.asarray(maps)
    _check_ndim("masks", masks, 3, "(N,H,W)")
    _check_ndim("maps", maps, 3, "(N,H,W)")
    _check_same_shape("masks", masks, "maps", maps)
    return _check_binary("masks", masks), _check_finite("maps", maps)


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ConfigError(f"fpr_limit: expected a value in (0, 1], got {fpr_limit}")


def _has_both(y: np.ndarray) -> bool:
    n_pos = int(np.count_nonzero(y))
    return 0 < n_pos < y.size


def _require_both(name: str, y: np.ndarray, what: str) -> None:
    if not _has_both(y):
        kind = "anomalous" if np.count_nonzero(y) else "normal"
        raise DataError(f"{name}: both normal and anomalous {what} are needed, got only {kind} ones ({y.size})")


# ---------------------------------------------------------------------------------------------------- image level
def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; labels (N,) binary, scores (N,) float."""
    y, s = _image_inputs(labels, scores)
    _require_both("labels", y, "images")
    return float(roc_auc_score(y, s))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (sklearn's step-wise AP, not the trapezoid AUPR); labels (N,), scores (N,)."""
    y, s = _image_inputs(labels, scores)
    _require_both("labels", y, "samples")
    return float(average_precision_score(y, s))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over all thresholds ``score >= t``; labels (N,), scores (N,). Also used on flattened pixels."""
    y, s = _image_inputs(labels, scores)
    _require_both("labels", y, "samples")
    return _f1_max(y, s)


def _f1_max(y: np.ndarray, s: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(y, s)
    denom = precision + recall
    # 0/0 happens only where precision = recall = 0, i.e. F1 = 0 by convention.
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


# ---------------------------------------------------------------------------------------------------- pixel level
# Pixel scores are compared at float32 precision (anomaly maps are float32 in practice). np.argsort is ~15x slower
# than np.sort on 30M values without AVX-512, so pixels are ranked by sorting uint64 words (float32 order key << 32
# | region id) once, and every pixel metric reads that one order.
_SIGN = np.uint32(0x80000000)
_LOW = np.uint32(0x7FFFFFFF)
_TOP = np.uint64(1 << 63)


def _sort_u64(a: np.ndarray) -> np.ndarray:
    """a (P,) uint64 sorted ascending (a new array; a is overwritten). torch's CPU sort of int64 is ~1.7x numpy's on
    this data (AVX2 machines); the top bit is flipped so that signed order is unsigned order. Equal words are
    indistinguishable, so any correct sort gives the same array. Costs 16 bytes per value more than an in-place
    sort (torch also returns the permutation)."""
    a ^= _TOP
    out = torch.sort(torch.from_numpy(a.view(np.int64))).values.numpy().view(np.uint64)
    out ^= _TOP
    return out


class _Ranked:
    """All pixels in descending score order: ``scores`` float32 (P,), ``regions`` uint64 (P,) region id (0 = normal),
    ``sizes`` (n_regions+1,) pixel count per id. Descending because sklearn flips its input before a stable argsort,
    which is then nearly free."""

    def __init__(self, masks: np.ndarray, maps: np.ndarray, valid: np.ndarray | None = None) -> None:
        regions, self.n_regions = ndimage.label(masks, structure=_STRUCTURE_8)  # int32 ids, 0 = normal
        if valid is not None:  # only the pixels that show the image (index --resize pad): the fill is not scored
            regions, maps = regions[valid], np.asarray(maps)[valid]
        self.sizes = np.bincount(regions.ravel(), minlength=self.n_regions + 1)
        keys = np.array(maps, dtype=np.float32).ravel()  # always a copy, overwritten in place below
        keys += np.float32(0.0)  # -0.0 -> +0.0: equal scores must get equal keys
        bits = keys.view(np.uint32)
        bits ^= (bits >> 31) * _LOW | _SIGN  # IEEE bits -> unsigned key with the same order
        packed = bits.astype(np.uint64)
        del keys, bits
        packed <<= np.uint64(32)
        packed |= regions.view(np.uint32).ravel()
        del regions
        desc = _sort_u64(packed)[::-1]
        del packed
        self.regions = desc & np.uint64(0xFFFFFFFF)
        key = (desc >> np.uint64(32)).astype(np.uint32)
        del desc
        key ^= ((key >> 31) ^ np.uint32(1)) * _LOW | _SIGN  # inverse of the key transform
        self.scores = key.view(np.float32)


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """ROC AUC over all pixels of all images; masks (N,H,W) binary, maps (N,H,W) float."""
    m, a = _pixel_inputs(masks, maps)
    _require_both("masks", m, "pixels")
    r = _Ranked(m, a)
    return _binary_curves(r, _thresholds(r))[0]


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD, Bergmann et al. 2021); in [0, 1].

    masks (N,H,W) binary, maps (N,H,W) float. For a threshold t (pixel positive iff score >= t):
    FPR = share of normal pixels (over all images) that are positive; PRO = mean over all 8-connected ground-truth
    regions of the share of the region that is positive. PRO(FPR) is integrated with the trapezoid rule from 0 to
    ``fpr_limit`` (the curve is linearly interpolated at the limit) and divided by ``fpr_limit``.
    Exact: every distinct score is a threshold. Cost: one sort of all pixels, ~56 bytes per pixel at peak.
    """
    _check_fpr_limit(fpr_limit)
    m, a = _pixel_inputs(masks, maps)
    _require_both("masks", m, "pixels")
    return _aupro(_Ranked(m, a), fpr_limit)


def localisation(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3,
                 valid: np.ndarray | None = None) -> tuple[float, float]:
    """(pixel AUROC, AUPRO) sharing one sort of all pixels (what `drdc tune` evaluates many times); valid as in
    compute_metrics."""
    _check_fpr_limit(fpr_limit)
    m, a = _pixel_inputs(masks, maps)
    _require_both("masks", m if valid is None else m[valid], "pixels")
    r = _Ranked(m, a, valid)
    keep = _thresholds(r)
    fpr, pro = _pro_curve(r, keep)
    return _binary_curves(r, keep)[0], float(_partial_trapezoid(fpr, pro, fpr_limit) / fpr_limit)


def _aupro(r: _Ranked, fpr_limit: float) -> float:
    fpr, pro = _pro_curve(r)
    return float(_partial_trapezoid(fpr, pro, fpr_limit) / fpr_limit)


def _thresholds(r: _Ranked) -> np.ndarray:
    """bool (P,): the positions that are real thresholds. Of a run of equal scores only the last position is
    one (descending order): it holds all of the run's changes."""
    keep = np.empty(r.scores.size, dtype=bool)
    np.not_equal(r.scores[1:], r.scores[:-1], out=keep[:-1])
    keep[-1] = True
    return keep


def _binary_curves(r: _Ranked, keep: np.ndarray) -> tuple[float, float, float]:
    """(ROC AUC, AP, F1-max) of the pixels, from the shared sort: sklearn's roc_auc_score, average_precision_score
    and the max F1 of precision_recall_curve, without their three sorts and passes (equal to 1e-9, tested)."""
    tps = np.cumsum(r.regions != 0, dtype=np.int64)[keep]  # true positives at each threshold (score >= t)
    fps = np.flatnonzero(keep).astype(np.int64) + 1 - tps  # positions are 0-based: 1 + index pixels are positive
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    tpr = np.concatenate(([0.0], tps / n_pos))
    fpr = np.concatenate(([0.0], fps / n_neg))
    auroc = float(np.trapezoid(tpr, fpr))
    precision = tps / (tps + fps)  # tps + fps >= 1 at every threshold
    recall = tps / n_pos
    ap = float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))  # step-wise, as sklearn's AP
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return auroc, ap, float(f1.max())


def _pro_curve(r: _Ranked, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct score, descending threshold, with (0,0) prepended and (1,1) appended."""
    regions = r.regions  # descending score order
    # Lowering the threshold past a pixel raises FPR by 1/n_normal (normal pixel) or PRO by 1/(|region|*n_regions).
    n_normal = int(r.sizes[0])
    pro_step = np.zeros(r.n_regions + 1)
    pro_step[1:] = 1.0 / (r.sizes[1:].astype(np.float64) * r.n_regions)
    keep = _thresholds(r) if keep is None else keep
    fpr = np.cumsum(regions == 0, dtype=np.int64)[keep] / n_normal  # exact integer counts
    pro = np.cumsum(pro_step[regions])[keep]
    np.minimum(pro, 1.0, out=pro)  # cumsum rounding must not push the curve above 1
    return np.concatenate(([0.0], fpr, [1.0])), np.concatenate(([0.0], pro, [1.0]))


def _partial_trapezoid(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) on [0, limit]; x ascending from 0 to 1, y interpolated linearly at ``limit``."""
    i = int(np.searchsorted(x, limit, side="right"))  # x[:i] <= limit < x[i]
    area = float(np.trapezoid(y[:i], x[:i]))
    if x[i - 1] < limit:  # then i < len(x) since x[-1] = 1 >= limit, and x[i] > limit > x[i-1]
        y_lim = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
        area += 0.5 * (y[i - 1] + y_lim) * (limit - x[i - 1])
    return area


# ---------------------------------------------------------------------------------------------------- all at once
def compute_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None,
    maps: np.ndarray | None,
    fpr_limit: float = 0.3,
    valid: np.ndarray | None = None,
) -> dict[str, float | None]:
    """All METRIC_NAMES for one category; labels/scores (N,), masks/maps (N,H,W) or None; valid (N,H,W) bool or
    None: the pixel metrics count only those pixels (the image, not the fill of a padded one).

    Image metrics are None when ``labels`` hold a single class; pixel metrics are None when masks or maps is None
    or when the masks hold a single class (no anomalous pixel: nothing to localise). Invalid input raises DataError.
    """
    _check_fpr_limit(fpr_limit)
    y, s = _image_inputs(labels, scores)
    out: dict[str, float | None] = dict.fromkeys(METRIC_NAMES)
    if _has_both(y):
        out["i_auroc"] = image_auroc(y, s)
        out["i_ap"] = average_precision(y, s)
        out["i_f1max"] = f1_max(y, s)
    if masks is None or maps is None:
        return out
    m, a = _pixel_inputs(masks, maps)
    if m.shape[0] != y.shape[0]:
        raise DataError(f"masks: expected {y.shape[0]} images (same as labels), got {m.shape[0]}")
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        _check_same_shape("masks", m, "valid", valid)
    if _has_both(m if valid is None else m[valid]):
        r = _Ranked(m, a, valid)  # one sort and one set of thresholds shared by all four pixel metrics
        keep = _thresholds(r)
        out["p_auroc"], out["p_ap"], out["p_f1max"] = _binary_curves(r, keep)
        fpr, pro = _pro_curve(r, keep)
        out["p_aupro"] = float(_partial_trapezoid(fpr, pro, fpr_limit) / fpr_limit)
    return out


def mean_over_categories(table: dict[str, dict]) -> dict[str, float | None]:
    """Each metric's mean over the categories that have it (the paper's "Avg" column)."""
    return {m: (float(np.mean(v)) if (v := [table[c][m] for c in table if c != "mean" and table[c][m] is not None])
                else None) for m in METRIC_NAMES}
