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


def image_score(maps: torch.Tensor, kernel: int = 16) -> torch.Tensor:
    """Image score = max of the average-pooled map (UniAD: kernel 16, stride 1). (N, S, S) -> (N,)."""
    k = min(kernel, maps.shape[-1], maps.shape[-2])
    pooled = F.avg_pool2d(maps[:, None].float(), kernel_size=k, stride=1)
    return pooled.flatten(1).amax(dim=1)
