"""Anomaly maps to image resolution and to image scores (Sec 4.4, last paragraph).

Pure tensor functions: no IO. Shapes: N images, (h, w) map resolution, S image size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(N, h, w) -> (N, size, size), bilinear (UniAD upsamples H_base to the image the same way)."""
    if maps.shape[-1] == size and maps.shape[-2] == size:
        return maps
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def image_score(maps: torch.Tensor, kernel: int = 16, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Image score = max of the average-pooled map (UniAD: kernel 16, stride 1). (N, S, S) -> (N,).

    valid (N, S, S) bool, for images padded to the square (index --resize pad): the fill takes the lowest value
    of its image's own pixels, and only windows at least half on the image count, so the fill (whose extent
    is the image's aspect) never decides a score."""
    k = min(kernel, maps.shape[-1], maps.shape[-2])
    maps = maps.float()
    if valid is None:
        return F.avg_pool2d(maps[:, None], kernel_size=k, stride=1).flatten(1).amax(dim=1)
    valid = torch.as_tensor(valid, dtype=torch.bool)
    floor = torch.where(valid, maps, torch.tensor(float("inf"))).flatten(1).amin(dim=1)[:, None, None]
    pooled = F.avg_pool2d(torch.where(valid, maps, floor)[:, None], kernel_size=k, stride=1).flatten(1)
    cover = F.avg_pool2d(valid[:, None].float(), kernel_size=k, stride=1).flatten(1)
    inside = torch.where(cover >= 0.5, pooled, torch.tensor(float("-inf"))).amax(dim=1)
    return torch.where(torch.isfinite(inside), inside, pooled.amax(dim=1))  # a sliver of an image: every window
