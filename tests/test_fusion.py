"""Eq 16-19 against direct NumPy computations written independently here (loops, block means, np.linalg.norm)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from stages.errors import ConfigError
from stages.method.fusion import (check_fusion, diff_heatmap, drdc_map, fuse, mean_filter, multiscale_base,
                           spatio_temporal)

RNG = np.random.default_rng(0)


def np_down(x: np.ndarray, l: int) -> np.ndarray:
    """Block means of l x l over the last two axes, by explicit loops."""
    H, W = x.shape[-2:]
    out = np.zeros(x.shape[:-2] + (H // l, W // l))
    for i in range(H // l):
        for j in range(W // l):
            out[..., i, j] = x[..., i * l:(i + 1) * l, j * l:(j + 1) * l].mean(axis=(-2, -1))
    return out


def np_bilinear(x: np.ndarray, H: int, W: int) -> np.ndarray:
    """Bilinear resize of the last two axes, half-pixel centres, source clamped at the edges (align_corners=False)."""
    def weights(n_in: int, n_out: int) -> np.ndarray:
        A = np.zeros((n_out, n_in))
        for o in range(n_out):
            src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = min(int(np.floor(src)), n_in - 1)
            i1, lam = min(i0 + 1, n_in - 1), src - i0
            A[o, i0] += 1 - lam
            A[o, i1] += lam
        return A
    return weights(x.shape[-2], H) @ x @ weights(x.shape[-1], W).T


def np_eq16(ori: np.ndarray, out: np.ndarray, l: int) -> np.ndarray:
    H, W = ori.shape[-2:]
    return np_bilinear(np.linalg.norm(np_down(ori, l) - np_down(out, l), axis=1), H, W)


def np_mean_filter(h: np.ndarray, m: int) -> np.ndarray:
    r, out = m // 2, np.zeros_like(h)
    for i in range(h.shape[-2]):
        for j in range(h.shape[-1]):  # the window clipped to the image: mean of the pixels present
            out[:, i, j] = h[:, max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1].mean(axis=(-2, -1))
    return out


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float32))


def close(a: torch.Tensor, b: np.ndarray) -> bool:
    return np.allclose(a.numpy(), b, atol=1e-5)


@pytest.fixture(scope="module")
def fixture():
    """B=2 images 16x16, 2 t x 2 c outputs, l in {1, 2}: K = 8 maps ordered (t, c, l); a 4x4 base map."""
    ori = RNG.uniform(-1, 1, (2, 3, 16, 16))
    outs = {(ti, ci): np.clip(ori + RNG.normal(0, 0.3, ori.shape), -1, 1) for ti in range(2) for ci in range(2)}
    keys = [(ti, ci, l) for ti in range(2) for ci in range(2) for l in (1, 2)]
    np_maps = np.stack([np_eq16(ori, outs[ti, ci], l) for ti, ci, l in keys], axis=1)
    maps = torch.stack([diff_heatmap(t(ori), t(outs[ti, ci]), l) for ti, ci, l in keys], dim=1)
    return dict(ori=ori, outs=outs, keys=keys, np_maps=np_maps, maps=maps, base=RNG.uniform(0, 5, (2, 4, 4)))


@pytest.mark.parametrize("l", [1, 2, 4, 8])
def test_eq16_matches_numpy(fixture, l):
    h = diff_heatmap(t(fixture["ori"]), t(fixture["outs"][0, 1]), l)
    assert h.shape == (2, 16, 16) and h.dtype == torch.float32
    assert close(h, np_eq16(fixture["ori"], fixture["outs"][0, 1], l))


def test_eq16_l1_is_plain_channel_norm_and_U_keeps_constants(fixture):
    ori, out = fixture["ori"], fixture["outs"][1, 0]
    assert close(diff_heatmap(t(ori), t(out), 1), np.linalg.norm(ori - out, axis=1))
    # a constant difference (0.3, 0.4, 0) per pixel: every block and every bilinear blend gives 0.5
    shift = np.array([0.3, 0.4, 0.0])[None, :, None, None]
    for l in (2, 4, 8):
        assert close(diff_heatmap(t(ori + shift), t(ori), l), np.full((2, 16, 16), 0.5))


def test_np_bilinear_reference_agrees_with_torch():  # the reference itself, on a non-trivial grid
    x = RNG.normal(size=(2, 1, 3, 5))
    ref = torch.nn.functional.interpolate(t(x), size=(12, 20), mode="bilinear", align_corners=False)
    assert close(ref, np_bilinear(x, 12, 20))


def test_spatio_temporal_and_mean_filter(fixture):
    st = spatio_temporal(fixture["maps"])
    assert close(st, fixture["np_maps"].mean(axis=1))
    for m in (1, 3, 5, 41):  # 41 > 16: every window is clipped, the whole image is averaged
        assert close(mean_filter(st, m), np_mean_filter(st.numpy().astype(np.float64), m))
    h = t(RNG.uniform(size=(1, 8, 8)))
    corner = h[0, :2, :2].mean()  # 3x3 at (0, 0) covers only 4 pixels: their mean, no zero padding
    assert torch.isclose(mean_filter(h, 3)[0, 0, 0], corner)


def test_fuse_formula():
    b, s = RNG.uniform(size=(2, 8, 8)), RNG.uniform(size=(2, 8, 8))
    assert close(fuse(t(b), t(s), 0.9, 272), 0.1 * b / 272 + 0.9 * s / 3)
    assert close(fuse(t(b), t(s), 0.0, 192, 3), b / 192)
    assert close(fuse(t(b), t(s), 1.0, 192, 1), s)


def test_drdc_map_end_to_end(fixture):
    base = np_bilinear(fixture["base"], 16, 16)
    want = 0.1 * base / 272 + 0.9 * np_mean_filter(fixture["np_maps"].mean(axis=1), 5) / 3
    got = drdc_map(t(base), fixture["maps"], gamma=0.9, m=5, c_feat=272)
    assert got.shape == (2, 16, 16) and close(got, want)


def test_ablation_only_last_step_l1(fixture):
    base, maps, np_maps = t(np_bilinear(fixture["base"], 16, 16)), fixture["maps"], fixture["np_maps"]
    last = [i for i, (ti, ci, l) in enumerate(fixture["keys"]) if ti == 1 and l == 1]  # t = min, one per c
    off = drdc_map(base, maps, m=3, spatio_temporal_fusion=False, last_index=last)
    want = 0.1 * base.numpy() / 272 + 0.9 * np_mean_filter(np_maps[:, last].mean(axis=1), 3) / 3
    assert close(off, want)
    assert torch.equal(off, drdc_map(base, maps[:, last], m=3, spatio_temporal_fusion=False))  # pre-selected
    assert close(drdc_map(base, maps, m=3, spatio_temporal_fusion=False, last_index=last[0]),
                 0.1 * base.numpy() / 272 + 0.9 * np_mean_filter(np_maps[:, last[0]], 3) / 3)
    on = drdc_map(base, maps, m=3, last_index=last)  # last_index is ignored while fusion is on
    assert torch.equal(on, drdc_map(base, maps, m=3)) and not torch.allclose(on, off)


def test_multiscale_base(fixture):
    low = fixture["base"]
    full = np_bilinear(low, 16, 16)
    want = np.mean([np_bilinear(np_down(full, l), 16, 16) for l in (1, 2, 4, 8)], axis=0)
    ms = multiscale_base(t(low), 16)
    assert ms.shape == (2, 16, 16) and close(ms, want)
    assert close(multiscale_base(t(low), 16, scales=(1,)), full)
    assert not torch.allclose(drdc_map(ms, fixture["maps"], m=3), drdc_map(t(full), fixture["maps"], m=3))


@pytest.mark.parametrize("gamma, m, option", [(1.5, 41, "gamma: must be in [0, 1] (got 1.5)"),
                                              (-0.1, 41, "gamma"), (float("nan"), 41, "gamma"),
                                              (0.9, 40, "filter: must be an odd integer >= 1 (got 40)"),
                                              (0.9, 0, "filter"), (0.9, 3.0, "filter")])
def test_check_fusion_errors(gamma, m, option):
    with pytest.raises(ConfigError, match="^" + re.escape(option)):
        check_fusion(gamma, m)


def test_bad_scale_and_empty_selection(fixture):
    x = t(fixture["ori"])
    for bad in (3, 0):
        with pytest.raises(ConfigError, match=f"^l: .*16x16 \\(got {bad}\\)$"):
            diff_heatmap(x, x, bad)
    with pytest.raises(ConfigError, match="^l: "):
        multiscale_base(t(fixture["base"]), 16, scales=(1, 3))
    with pytest.raises(ConfigError, match="^t/c/l: "):
        spatio_temporal(torch.zeros(2, 0, 16, 16))
    check_fusion(0.0, 1)  # the bounds are valid
    check_fusion(1.0, 41)
