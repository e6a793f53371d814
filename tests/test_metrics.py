"""Tests for stages.method.metrics: sklearn agreement, hand-computed AUPRO fixtures, a slow AUPRO reference, validation."""
from __future__ import annotations

import bisect

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from stages.errors import ConfigError, DataError
from stages.method.metrics import (
    METRIC_NAMES,
    aupro,
    average_precision,
    compute_metrics,
    f1_max,
    image_auroc,
    pixel_auroc,
)


def _image_fixture(seed: int = 0, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.4
    scores = rng.normal(size=n) + labels  # informative but imperfect
    scores[:20] = np.round(scores[:20], 1)  # some ties
    return labels.astype(int), scores


def _pixel_fixture(seed: int = 0, n: int = 5, h: int = 16, w: int = 16, decimals: int | None = None):
    """Blob masks (first image good) and noisy float32 maps, negative values included."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(n, h, w)), sigma=(0, 1.5, 1.5))
    masks = smooth > 0.25
    masks[0] = False
    maps = (smooth + 0.3 * rng.normal(size=(n, h, w))).astype(np.float32)
    if decimals is not None:
        maps = np.round(maps, decimals)  # many ties, including ties between normal and anomalous pixels
    return masks, maps


# ------------------------------------------------------------------------------------------------ image metrics
def test_image_auroc_and_ap_match_sklearn() -> None:
    labels, scores = _image_fixture()
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    assert isinstance(image_auroc(labels, scores), float)


def test_f1_max_matches_brute_force() -> None:
    labels, scores = _image_fixture(seed=1)
    best = 0.0
    for t in np.unique(scores):  # every distinct threshold, predicted positive iff score >= t
        pred = scores >= t
        tp = np.sum(pred & (labels == 1))
        fp = np.sum(pred & (labels == 0))
        fn = np.sum(~pred & (labels == 1))
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    assert f1_max(labels, scores) == pytest.approx(best, abs=1e-9)


def test_f1_max_perfect_and_bool_labels() -> None:
    assert f1_max(np.array([False, False, True, True]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0


def test_pixel_auroc_matches_sklearn() -> None:
    masks, maps = _pixel_fixture(seed=2)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-6)
    assert pixel_auroc(masks.astype(np.uint8), maps.astype(np.float64)) == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------------------------ AUPRO by hand
def test_aupro_two_regions_by_hand() -> None:
    # 4x4 image. Region A = {(0,0)} (size 1), region B = bottom row cols 1..3 (size 3); 12 normal pixels.
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = True
    mask[3, 1:] = True
    amap = np.full((4, 4), 0.1)  # nine normal pixels at 0.1
    amap[0, 0] = 0.9  # A
    amap[3, 1], amap[3, 2], amap[3, 3] = 0.8, 0.6, 0.2  # B
    amap[1, 1] = 0.7  # one normal at 0.7
    amap[1, 2] = amap[1, 3] = 0.5  # two normals at 0.5
    # Lowering the threshold:        FPR     PRO = (overlap_A + overlap_B) / 2
    #   t=0.9  A full                0       (1 + 0)/2   = 1/2
    #   t=0.8  B 1/3                 0       (1 + 1/3)/2 = 2/3
    #   t=0.7  +1 normal             1/12    2/3
    #   t=0.6  B 2/3                 1/12    (1 + 2/3)/2 = 5/6
    #   t=0.5  +2 normals            3/12    5/6
    #   t=0.2  B full                3/12    1
    #   t=0.1  +9 normals            1       1
    # Area on [0, 0.3]: 2/3 * 1/12 + 5/6 * (3/12 - 1/12) + 1 * (0.3 - 0.25) = 1/18 + 5/36 + 1/20 = 11/45
    # (the last segment, (0.25, 1) -> (1, 1), is interpolated at 0.3: PRO = 1). Normalised: (11/45) / 0.3 = 22/27.
    assert aupro(mask[None], amap[None]) == pytest.approx(22 / 27, abs=1e-9)
    # Up to FPR 1/12 exactly (a curve point, no interpolation): area 1/18, normalised (1/18) * 12 = 2/3.
    assert aupro(mask[None], amap[None], fpr_limit=1 / 12) == pytest.approx(2 / 3, abs=1e-9)


def test_aupro_interpolates_a_sloped_segment_at_the_limit() -> None:
    # 3x4 image, one region {(0,0), (0,1)} (size 2), 10 normal pixels.
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, :2] = True
    amap = np.full((3, 4), 0.1)  # six normals at 0.1
    amap[0, 0] = 0.9  # region half covered: (FPR 0, PRO 1/2)
    amap[1, 0] = amap[1, 1] = 0.8  # two normals: (0.2, 1/2)
    amap[0, 1] = amap[1, 2] = amap[1, 3] = 0.5  # tie of the region's 2nd pixel with two normals: (0.4, 1) in one step
    # Curve: (0,0) (0,1/2) (0.2,1/2) (0.4,1) (1,1) (1,1). At 0.3 the segment (0.2,1/2)->(0.4,1) gives PRO 3/4.
    # Area = 1/2 * 0.2 + (1/2 + 3/4)/2 * 0.1 = 0.1 + 0.0625 = 0.1625; normalised 0.1625 / 0.3 = 13/24.
    assert aupro(mask[None], amap[None]) == pytest.approx(13 / 24, abs=1e-9)


def test_aupro_uses_8_connectivity() -> None:
    # (0,0) touches (1,1) only diagonally: with 8-connectivity {(0,0),(1,1),(1,2)} is ONE region of size 3.
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[1, 2] = True
    amap = np.full((4, 4), 0.5)  # 13 normals at 0.5
    amap[0, 0] = 1.0
    amap[1, 1] = amap[1, 2] = 0.0
    # Curve: (0,0) (0,1/3) (1,1/3) (1,1): AUPRO = 1/3. (4-connectivity would give regions of size 1 and 2 -> 1/2.)
    assert aupro(mask[None], amap[None]) == pytest.approx(1 / 3, abs=1e-9)


def test_aupro_perfect_and_inverted_maps() -> None:
    masks, _ = _pixel_fixture(seed=3)
    rng = np.random.default_rng(3)
    noise = rng.random(masks.shape)
    perfect = np.where(masks, 1.0 + noise, noise)  # every anomalous pixel above every normal pixel
    assert aupro(masks, perfect) == pytest.approx(1.0, abs=1e-12)
    inverted = np.where(masks, noise, 1.0 + noise)  # every normal pixel above: PRO stays 0 until FPR = 1
    assert aupro(masks, inverted) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------ AUPRO vs slow ref
def _aupro_reference(masks: np.ndarray, maps: np.ndarray, limit: float) -> float:
    """Direct definition: per distinct threshold, FPR and per-region overlaps; MVTec's trapezoid with x_max."""
    regions = []
    for i in range(masks.shape[0]):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3), dtype=int))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    normal = maps[~masks]
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        xs.append(float(np.mean(normal >= t)))
        ys.append(float(np.mean([np.mean(maps[i][reg] >= t) for i, reg in regions])))
    x, y = np.array(xs + [1.0]), np.array(ys + [1.0])
    correction = 0.0
    if limit not in x:
        ins = bisect.bisect(x, limit)
        y_lim = y[ins - 1] + (y[ins] - y[ins - 1]) * (limit - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_lim + y[ins - 1]) * (limit - x[ins - 1])
    keep = x <= limit
    x, y = x[keep], y[keep]
    return (float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1]))) + correction) / limit


@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_matches_slow_reference(decimals: int | None, limit: float) -> None:
    masks, maps = _pixel_fixture(seed=4, decimals=decimals)
    per_image = [ndimage.label(m, structure=np.ones((3, 3)))[1] for m in masks]
    assert sum(per_image) >= 4 and sum(n > 0 for n in per_image) >= 3  # several regions in several images
    assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(_aupro_reference(masks, maps, limit), abs=1e-6)


# ------------------------------------------------------------------------------------------------ compute_metrics
def test_compute_metrics_all_keys_and_consistent() -> None:
    masks, maps = _pixel_fixture(seed=5)
    labels = masks.reshape(len(masks), -1).any(axis=1).astype(int)
    labels[1] = 0  # a mislabelled image keeps both classes present (image 0 is good)
    scores = maps.reshape(len(maps), -1).max(axis=1)
    out = compute_metrics(labels, scores, masks, maps)
    assert tuple(out) == METRIC_NAMES
    assert all(type(v) is float for v in out.values())
    assert out["i_auroc"] == pytest.approx(image_auroc(labels, scores), abs=1e-12)
    assert out["i_f1max"] == pytest.approx(f1_max(labels, scores), abs=1e-12)
    assert out["p_auroc"] == pytest.approx(pixel_auroc(masks, maps), abs=1e-12)
    assert out["p_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-6)
    assert out["p_f1max"] == pytest.approx(f1_max(masks.ravel(), maps.ravel()), abs=1e-6)
    assert out["p_aupro"] == pytest.approx(aupro(masks, maps), abs=1e-12)


def test_compute_metrics_none_cases() -> None:
    labels, scores = np.array([0, 1, 1]), np.array([0.1, 0.7, 0.4])
    out = compute_metrics(labels, scores, None, None)
    assert out["i_auroc"] == 1.0 and all(out[k] is None for k in METRIC_NAMES if k.startswith("p_"))
    empty = np.zeros((3, 4, 4), dtype=bool)  # nothing to localise
    out = compute_metrics(labels, scores, empty, np.zeros((3, 4, 4)))
    assert all(out[k] is None for k in METRIC_NAMES if k.startswith("p_"))
    masks, maps = _pixel_fixture(seed=6, n=3)
    out = compute_metrics(np.ones(3, dtype=int), scores, masks, maps)  # single class of images, pixels fine
    assert all(out[k] is None for k in METRIC_NAMES if k.startswith("i_"))
    assert out["p_aupro"] is not None


# ------------------------------------------------------------------------------------------------ validation
def test_shape_mismatch_names_expected_and_got() -> None:
    with pytest.raises(DataError, match=r"scores: expected shape \(5,\).*got \(4,\)"):
        image_auroc(np.array([0, 1, 0, 1, 1]), np.zeros(4))
    with pytest.raises(DataError, match=r"maps: expected shape \(2, 4, 4\).*got \(2, 4, 5\)"):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(DataError, match=r"masks: expected a 3-D array \(N,H,W\), got shape \(4, 4\)"):
        pixel_auroc(np.zeros((4, 4)), np.zeros((4, 4)))
    masks, maps = _pixel_fixture(n=3)
    with pytest.raises(DataError, match=r"masks: expected 2 images"):
        compute_metrics(np.array([0, 1]), np.array([0.0, 1.0]), masks, maps)


def test_nan_in_maps_counted() -> None:
    masks, maps = _pixel_fixture(n=3)
    maps[1, 2, 3] = np.nan
    maps[2, 0, 0] = np.inf
    with pytest.raises(DataError, match=r"maps: expected finite values, found 2 NaN/inf"):
        aupro(masks, maps)
    with pytest.raises(DataError, match=r"scores: .*found 1 NaN/inf"):
        compute_metrics(np.array([0, 1]), np.array([0.0, np.nan]), None, None)


def test_non_binary_mask_and_labels() -> None:
    masks, maps = _pixel_fixture(n=3)
    masks255 = masks.astype(np.uint8) * 255
    msg = r"masks: expected binary values \(bool or 0/1\), found 1 other value\(s\): 255"
    with pytest.raises(DataError, match=msg):
        aupro(masks255, maps)
    with pytest.raises(DataError, match=r"labels: expected binary values.*: 2"):
        image_auroc(np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3]))


def test_single_class_raises_in_single_functions() -> None:
    with pytest.raises(DataError, match=r"labels: both normal and anomalous images are needed, got only normal"):
        image_auroc(np.zeros(4), np.arange(4.0))
    with pytest.raises(DataError, match=r"both normal and anomalous"):
        f1_max(np.ones(4), np.arange(4.0))
    with pytest.raises(DataError, match=r"masks: both normal and anomalous pixels are needed"):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))


def test_bad_fpr_limit() -> None:
    masks, maps = _pixel_fixture(n=3)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"fpr_limit"):
            aupro(masks, maps, fpr_limit=bad)


@pytest.mark.parametrize("decimals,rate,seed", [(None, 0.05, 0), (1, 0.2, 1), (2, 0.01, 2), (0, 0.5, 3)])
def test_pixel_metrics_from_one_sort_equal_sklearn(decimals, rate, seed) -> None:
    """The pixel AUROC, AP and F1-max that share the AUPRO sort equal sklearn's own to 1e-9, ties included."""
    from sklearn.metrics import precision_recall_curve

    rng = np.random.default_rng(seed)
    masks = rng.random((6, 40, 40)) < rate
    maps = (rng.random((6, 40, 40)) + 0.7 * masks).astype(np.float32)
    if decimals is not None:
        maps = np.round(maps, decimals).astype(np.float32)  # many equal scores
    labels = np.array([0, 0, 1, 1, 1, 1])
    out = compute_metrics(labels, rng.random(6), masks, maps)
    y, s = masks.ravel(), maps.ravel()
    p, r, _ = precision_recall_curve(y, s)
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    assert out["p_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert out["p_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert out["p_f1max"] == pytest.approx(f1.max(), abs=1e-9)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
