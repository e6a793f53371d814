"""Anomaly maps to image resolution and to image scores (Sec 4.4, last paragraph).

Pure tensor functions: no IO. Shapes: N images, (h, w) map resolution, S image size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from stages.method.choices import POOL


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(N, h, w) -> (N, size, size), bilinear (UniAD upsamples H_base to the image the same way)."""
    if maps.shape[-1] == size and maps.shape[-2] == size:
        return maps
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def box_sum(x: torch.Tensor, k: int, dim: int, pad: int = 0) -> torch.Tensor:
    """Sums of every k consecutive values along dim (-1 or -2; stride 1), after pad zeros on both sides: length
    n + 2 pad - k + 1. Running sums in float64, so the cost per value does not grow with k (a 41 x 41 mean
    filter or a 16 x 16 pool is two of these) and the rounding stays far below float32's."""
    if dim not in (-1, -2):
        raise ValueError(f"box_sum: dim must be -1 or -2, got {dim}")
    x = x.double()
    squeeze = x.ndim == 1
    if squeeze:
        x = x[None]
    c = torch.cumsum(F.pad(x, (pad + 1, pad) if dim == -1 else (0, 0, pad + 1, pad)), dim)  # a leading 0
    n = c.shape[dim] - k
    out = c.narrow(dim, k, n) - c.narrow(dim, 0, n)
    return out[0] if squeeze else out


def box_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, H, W) -> (N, H - k + 1, W - k + 1) float32: the k x k average pool, stride 1 (F.avg_pool2d's values)."""
    return (box_sum(box_sum(x, k, -2), k, -1) / (k * k)).float()


def image_score(maps: torch.Tensor, kernel: int = POOL, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Image score = max of the average-pooled map (UniAD: kernel 16, stride 1). (N, S, S) -> (N,).

    valid (N, S, S) bool, for images padded to the square (index --resize pad): the fill takes the lowest value
    of its image's own pixels, and only windows at least half on the image count, so the fill (whose extent
    is the image's aspect) never decides a score."""
    k = min(kernel, maps.shape[-1], maps.shape[-2])
    maps = maps.float()
    if valid is None:
        return box_mean(maps, k).flatten(1).amax(dim=1)
    valid = torch.as_tensor(valid, dtype=torch.bool)
    floor = torch.where(valid, maps, torch.tensor(float("inf"))).flatten(1).amin(dim=1)[:, None, None]
    pooled = box_mean(torch.where(valid, maps, floor), k).flatten(1)
    cover = box_mean(valid.float(), k).flatten(1)
    inside = torch.where(cover >= 0.5, pooled, torch.tensor(float("-inf"))).amax(dim=1)
    return torch.where(torch.isfinite(inside), inside, pooled.amax(dim=1))  # a sliver of an image: every window
