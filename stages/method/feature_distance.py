"""Feature-space diffusion heatmaps: an alternative to Eq 16's pixel distance (not in the paper).

Every reconstruct-and-compare peer (DDAD's anomaly_map.py, DiAD, GLAD) compares the reconstruction with the
original in the space of a frozen pretrained backbone, because a pixel distance lights up every texture the
model cannot predict exactly. Here:

    H_feat^{t,c} = U( mean_j ( 1 - cos( phi_j(I_ori), phi_j(I_out^{t,c}) ) ) )      j in {stride 4, stride 8}

phi_j: the run's own frozen backbone (the one `extract` used), fed both images at the index image size, so the
backbone sees the scale it was trained at; cos over channels at every position; U: bilinear to the diffusion
resolution, where the pixel maps are kept. Smoothing is left to Eq 18's mean filter, as for the pixel maps.
Pure tensor functions: no IO. Shapes: B images, (S, S) diffusion resolution, S_img the index image size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stages.method.choices import DISTANCES  # noqa: F401 (torch-free vocabulary, re-exported)

LEVELS = (1, 2)  # indices into the backbone's pyramid (strides 2, 4, 8, 16): strides 4 and 8, as DDAD


def _to_backbone(x: Tensor, size_in: int) -> Tensor:
    """Model space [-1, 1] at (S, S) -> RGB in [0, 1] at (size_in, size_in)."""
    x = (x.float() + 1.0) / 2.0
    if x.shape[-1] != size_in:
        x = F.interpolate(x, size=(size_in, size_in), mode="bilinear", align_corners=False)
    return x


def features(phi, x: Tensor, size_in: int) -> list[Tensor]:
    """phi_j(x) for j in LEVELS. x (B, 3, S, S) in model space -> [(B, C_j, h_j, w_j)]."""
    maps = phi.pyramid(_to_backbone(x, size_in), upto=max(LEVELS))
    return [maps[j] for j in LEVELS]


def feature_heatmap(f_ori: list[Tensor], f_out: list[Tensor], size: int) -> Tensor:
    """H_feat from the features of I_ori and of I_out (as `features` gives them) -> (B, size, size) float32."""
    maps = []
    for a, b in zip(f_ori, f_out, strict=True):
        d = 1.0 - F.cosine_similarity(a.float(), b.float(), dim=1)  # (B, h, w), in [0, 2]
        maps.append(F.interpolate(d[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0])
    return torch.stack(maps).mean(0)

