"""The norm of the reconstruction residual in Eq 2, and a drdc option for it.

Eq (2) as printed: H_base(p) = || r_p ||_2 with r = F_in - F_out (channels at feature position p).
Option `mahalanobis`: H_base(p) = sqrt((r_p - mu_p)^T Sigma_p^-1 (r_p - mu_p)), where (mu_p, Sigma_p) are the mean
and Ledoit-Wolf shrunk covariance of the residuals of the category's train images at position p (PaDiM's
per-position Gaussian, Defard et al. 2021, fitted to residuals instead of features).

Why: the L2 norm weighs each channel by its raw scale and each position alike, so channels and positions where
normal images vary a lot (e.g. the border positions of the frozen features) decide the map. The Gaussian whitens
the residual per position and per category. It is affine-invariant: when F_out is nearly constant per position
(a reconstruction that has learned little, as at a CPU's few hundred steps) the map equals PaDiM on F_in; the
better F_out predicts F_in, the more of F_in's variation it explains away before the Gaussian sees it.

Pure math: no IO. Shapes: B images, C channels, (h, w) feature resolution, P = h*w positions, K categories.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import Tensor

from stages.method.choices import RESIDUAL_NORMS  # noqa: F401 (torch-free vocabulary, re-exported)
from stages.models.reconstruction import base_heatmap, residual


def stage_channels(backbone_channels: Sequence[int], stages: Sequence[int]) -> list[int]:
    """Channel indices of F_in that come from the given backbone stages (1-based, as concatenated by extract);
    () means every stage."""
    bounds = np.cumsum([0, *backbone_channels])
    chosen = stages or range(1, len(backbone_channels) + 1)
    for s in chosen:
        if not 1 <= s <= len(backbone_channels):
            raise ValueError(f"stage {s} is not one of 1..{len(backbone_channels)}")
    return [c for s in sorted(chosen) for c in range(int(bounds[s - 1]), int(bounds[s]))]


def fit_gaussian(residuals: Tensor, on_position: Callable[[], object] | None = None) -> tuple[Tensor, Tensor]:
    """Per-position mean and precision of normal residuals: (N, C, h, w) -> mu (P, C), Sigma^-1 (P, C, C),
    float32. Ledoit-Wolf shrinkage (sklearn) keeps Sigma invertible when N is not much larger than C.
    on_position: called after each position's fit (a progress bar's tick)."""
    n, c, h, w = residuals.shape
    if n < 2:
        raise ValueError(f"fit_gaussian: needs at least 2 residual maps, got {n}")
    x = residuals.double().permute(2, 3, 0, 1).reshape(h * w, n, c).numpy()
    mu, prec = np.empty((h * w, c)), np.empty((h * w, c, c))
    for p in range(h * w):
        lw = LedoitWolf().fit(x[p])
        mu[p], prec[p] = lw.location_, lw.precision_
        if on_position is not None:
            on_position()
    return torch.from_numpy(mu).float(), torch.from_numpy(prec).float()


def mahalanobis(r: Tensor, mu: Tensor, prec: Tensor) -> Tensor:
    """The distance of every residual to every category's Gaussian: r (B, C, h, w), mu (K, P, C),
    prec (K, P, C, C) -> (B, K, h, w), computed in prec's dtype (the store's maps in float64)."""
    b, c, h, w = r.shape
    d = r.flatten(2).transpose(1, 2).to(prec.dtype)[:, None] - mu.to(prec.dtype)[None]  # (B, K, P, C)
    m2 = torch.einsum("bkpc,kpcd,bkpd->bkp", d, prec, d).clamp_min(0)
    return m2.sqrt().reshape(b, -1, h, w)


def own_or_nearest(m: Tensor, k: Tensor) -> Tensor:
    """(B, K, h, w) distances, k (B,) int64 each row's category (-1: unknown) -> (B, h, w): the row's own
    category's distance, or the smallest over categories at each position."""
    own = m.gather(1, k.clamp_min(0)[:, None, None, None].expand(-1, 1, *m.shape[2:]))[:, 0]
    return torch.where(k[:, None, None] >= 0, own, m.amin(dim=1))


def residual_map(f_in: Tensor, f_out: Tensor, channels: Sequence[int] | Tensor | None = None,
                 mu: Tensor | None = None, prec: Tensor | None = None, k: Tensor | None = None) -> Tensor:
    """H_base (B, h, w) of f_in, f_out (B, C, h, w): Eq 2's L2 norm when mu is None, else the Mahalanobis norm of
    the residual's `channels` under the Gaussians mu (K, P, C'), prec (K, P, C', C') of the rows' categories k
    (B,) (-1: the nearest), in prec's dtype."""
    if mu is None or prec is None or k is None:
        return base_heatmap(f_in, f_out)  # Eq 2
    r = residual(f_in, f_out)
    return own_or_nearest(mahalanobis(r if channels is None else r[:, channels], mu, prec), k)


def outside_score(m: Tensor) -> Tensor:
    """How far an image lies from every category the run was trained on: for each category the median over
    positions of the Mahalanobis distances (a defect raises a minority of positions; an image of another kind of
    object raises most), then the smallest over categories. (B, K, h, w) -> (B,)."""
    return m.flatten(2).median(dim=2).values.amin(dim=1)
