"""The diffusion heatmaps (Eq 11, 16) and their spatio-temporal fusion (Sec 4.4, Eq 17-19); Table 5's switches.

Pure tensor functions: no IO. Shapes: B images, (H, W) image size, K selected (t, c, l) diffusion heatmaps.
D = average pooling with kernel = stride = l; U = bilinear upsampling back to (H, W), align_corners=False
(the way UniAD upsamples H_base); for l = 1 both are the identity.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from stages.errors import ConfigError, check
from stages.method.anomaly_map import box_sum, upsample
from stages.models.reconstruction import ReconstructionConfig
from stages.method.choices import (FILTER, FUSIONS, GAMMA, GATE, NORMS, check_fusion,  # noqa: F401 (the vocabulary,
                                   check_norm, check_refinement)  # torch-free, lives in choices; re-exported)


def _check_l(l: int, H: int, W: int) -> None:
    check(isinstance(l, int) and not isinstance(l, bool) and l >= 1 and H % l == 0 and W % l == 0, "l",
          f"a scale must be an integer >= 1 that divides the image size {H}x{W}", l)


def _D(x: Tensor, l: int) -> Tensor:
    """D(x, 1/l): means of l x l blocks. (B, C, H, W) -> (B, C, H/l, W/l)."""
    return x if l == 1 else F.avg_pool2d(x, l, l)


def _U(x: Tensor, H: int, W: int) -> Tensor:
    """U: bilinear back to (H, W), half-pixel centres (align_corners=False); identity at full size."""
    return x if x.shape[-2:] == (H, W) else F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)


def pixel_heatmap(I_ori: Tensor, I_out: Tensor) -> Tensor:  # noqa: N803
    """Eq 11: H^{t,c} = || I_ori - I_out^{t,c} ||_2 over channels. (B, 3, H, W) x 2 -> (B, H, W) float32.
    It is Eq 16 at l = 1 (D and U are the identity there)."""
    return diff_heatmap(I_ori, I_out, 1)


def diff_heatmap(I_ori: Tensor, I_out: Tensor, l: int) -> Tensor:  # noqa: N803
    """Eq 16: H^{t,c,l} = U(|| D(I_ori, 1/l) - D(I_out, 1/l) ||_2 over channels, l); Eq 11 at l = 1.

    I_ori, I_out: (B, 3, H, W) in the same range (model space [-1, 1]); l must divide H and W. -> (B, H, W) float32.
    """
    if I_ori.shape != I_out.shape or I_ori.dim() != 4:
        raise ValueError(f"diff_heatmap: I_ori {tuple(I_ori.shape)} and I_out {tuple(I_out.shape)} "
                         "must be equal (B, C, H, W)")
    H, W = I_ori.shape[-2:]
    _check_l(l, H, W)
    # D is linear: D(I_ori) - D(I_out) = D(I_ori - I_out); float32 since cached images may be float16
    err = torch.linalg.vector_norm(_D(I_ori.float() - I_out.float(), l), dim=1, keepdim=True)
    return _U(err, H, W)[:, 0]


def spatio_temporal(maps: Tensor) -> Tensor:
    """Eq 17: H^ST = per-pixel mean of the K selected (t, c, l) heatmaps. (B, K, H, W) -> (B, H, W)."""
    if maps.dim() != 4 or maps.shape[1] == 0:
        raise ConfigError(f"no diffusion heatmaps selected to fuse (got shape {tuple(maps.shape)})", "t/c/l")
    return maps.float().mean(dim=1)


def mean_filter(h: Tensor, m: int) -> Tensor:
    """Eq 18: H^SST = H^ST * f_{m x m}, stride 1, same size out. (B, H, W) -> (B, H, W).

    The paper does not say how borders are handled: we pad by m // 2 and do not count the padding
    (count_include_pad=False), so a border pixel is the mean of the pixels its window covers (no zero bias).
    The box filter is separable, and so is the count of covered pixels at the border (rows x columns): one
    pass of running sums down the columns, one along the rows, divided by the count, costs the same for any m.
    """
    check_fusion(0.0, m)
    if m == 1:
        return h.float()
    sums = box_sum(box_sum(h, m, -2, m // 2), m, -1, m // 2)
    rows = box_sum(torch.ones(h.shape[-2]), m, -1, m // 2)  # pixels each window covers, per row / column
    cols = box_sum(torch.ones(h.shape[-1]), m, -1, m // 2)
    return (sums / (rows[:, None] * cols[None, :])).float()


def fuse(h_base: Tensor, h_sst: Tensor, gamma: float, c_feat: int, c_img: int = 3) -> Tensor:
    """Eq 19: H_out = (1 - gamma) * H_base / C_feat + gamma * H^SST / C_img.

    h_base (B, H, W) already at image resolution; h_sst (B, H, W). Dividing by the channel counts puts the
    feature L2 error (C_feat channels) and the pixel L2 error (C_img channels) on a comparable scale.
    """
    check_fusion(gamma, 1)
    if h_base.shape != h_sst.shape:
        raise ValueError(f"fuse: h_base {tuple(h_base.shape)} and h_sst {tuple(h_sst.shape)} differ "
                         "(upsample h_base to the image first)")
    return (1.0 - gamma) * h_base.float() / c_feat + gamma * h_sst.float() / c_img


def drdc_map(h_base: Tensor, h_diff: Tensor, gamma: float = GAMMA, m: int = FILTER,
             c_feat: int = ReconstructionConfig.in_channels, c_img: int = 3,
             spatio_temporal_fusion: bool = True, last_index: int | Sequence[int] | None = None) -> Tensor:
    """Eq 17-19 from cached maps: h_base (B, H, W) at image resolution, h_diff (B, K, H, W) -> H_out (B, H, W).

    spatio_temporal_fusion=True: average all K maps (Eq 17). False is Table 5's ablation "only the last step,
    l = 1": last_index names the maps of the last reverse step (t = min) at l = 1 in K, one per grid size c,
    and only those are averaged (the c-average stays: the ablation drops the t and l axes only). With
    last_index=None the caller has already passed just those maps and all K are averaged. The mean filter
    (Eq 18) and Eq 19 apply in both cases; last_index is ignored while fusion is on.
    """
    check_fusion(gamma, m)
    if h_diff.dim() != 4 or h_base.shape != (h_diff.shape[0], *h_diff.shape[2:]):
        raise ValueError(f"drdc_map: h_base {tuple(h_base.shape)} must be (B,H,W) of h_diff {tuple(h_diff.shape)}")
    if not spatio_temporal_fusion and last_index is not None:
        idx = [last_index] if isinstance(last_index, int) else list(last_index)
        h_diff = h_diff[:, idx]
    return fuse(h_base, mean_filter(spatio_temporal(h_diff), m), gamma, c_feat, c_img)


def multiscale_base(h_base_feat: Tensor, size: int, scales: Sequence[int] = (1, 2, 4, 8)) -> Tensor:
    """Table 5's "multi-scale base heatmap" switch (off in the paper's final model). (B, h, w) -> (B, size, size).

    The paper gives no formula; our reading applies Eq 16's D/U pair to the base map and averages over the
    same l set: mean_l U(D(H_base at image resolution, 1/l), l), H_base first upsampled bilinearly to size.
    """
    if len(scales) == 0:
        raise ConfigError("the multi-scale base heatmap needs at least one scale (got ())", "l")
    full = upsample(h_base_feat.float(), size)[:, None]
    for l in scales:
        _check_l(l, size, size)
    return torch.stack([_U(_D(full, l), size, size)[:, 0] for l in scales], dim=1).mean(dim=1)


def norm_stats(maps: Tensor, norm: str) -> Tensor:
    """(shift, scale) of one source map over N normal images: (N, H, W) -> (2, H, W), so that
    (map - shift) / scale is ~0 on a typical normal pixel and ~1 one normal spread above it.

    pixel: per-position mean and std; the std is floored at a tenth of its median, and at a hundredth of the
    mean's median, so that a position where the normals happen to agree (a flat background, or a single normal)
    does not turn tiny deviations into huge scores.
    quantile: q_0.9 and q_0.995 - q_0.9 of every pixel (EfficientAD), broadcast to (H, W).
    """
    check_norm(norm)
    x = maps.double()
    if norm == "pixel":
        shift, sd = x.mean(0), x.std(0, unbiased=False)
        scale = sd.clamp_min(max(float(0.1 * sd.median()), float(0.01 * shift.abs().median())) + 1e-12)
    elif norm == "quantile":
        q = np.quantile(x.flatten().numpy(), [0.9, 0.995])
        shift, scale = torch.full(x.shape[1:], float(q[0])), torch.full(x.shape[1:], max(float(q[1] - q[0]), 1e-12))
    else:
        shift, scale = torch.zeros(x.shape[1:]), torch.ones(x.shape[1:])
    return torch.stack([shift, scale]).float()


def normalise(maps: Tensor, stats: Tensor) -> Tensor:
    """(map - shift) / scale with per-image stats: maps (B, H, W), stats (B, 2, H, W) -> (B, H, W)."""
    return (maps.float() - stats[:, 0]) / stats[:, 1]


def fuse_normalised(h_base: Tensor, h_sst: Tensor | None, gamma: float, base_stats: Tensor,
                    diff_stats: Tensor | None) -> Tensor:
    """Eq 19 on normalised maps: H_out = (1 - gamma) N_base(H_base) + gamma N_diff(H^SST); the channel counts
    drop out, since each map is already on its normals' scale. gamma = 0 (base only) needs no diffusion map.
    h_base, h_sst (B, H, W); stats (B, 2, H, W)."""
    check_fusion(gamma, 1)
    out = (1.0 - gamma) * normalise(h_base, base_stats)
    if gamma > 0:
        if h_sst is None or diff_stats is None:
            raise ValueError("fuse_normalised: gamma > 0 needs the diffusion map and its statistics")
        out = out + gamma * normalise(h_sst, diff_stats)
    return out


def low_pass(h: Tensor, feat: int) -> Tensor:
    """h as the base map's resolution sees it: the mean over each cell of the base map's feat x feat grid, bilinearly
    upsampled back (as H_base itself is). (B, H, W) -> (B, H, W) float32."""
    H = h.shape[-1]
    return upsample(F.adaptive_avg_pool2d(h[:, None].float(), feat)[:, 0], H)


def high_pass(h: Tensor, feat: int) -> Tensor:
    """The detail of h finer than the base map's grid: h - low_pass(h). (B, H, W) -> (B, H, W) float32."""
    return h.float() - low_pass(h, feat)


def gate_of(b: Tensor, gate: float) -> Tensor:
    """How far the base map is raised, from 0 (at or below the normal mean) to 1 (gate normal standard deviations
    above it or more): clamp(b / gate, 0, 1). (B, H, W) -> (B, H, W)."""
    return (b.float() / gate).clamp(0.0, 1.0)


def refine(b: Tensor, d: Tensor, gamma: float, fusion: str, feat: int, gate: float = GATE) -> Tensor:
    """H_out = (1 - gamma) b + gamma X from the base map b and the diffusion map d on a common scale (Eq 19's
    terms), with X by `fusion`: add: d (Eq 19); highpass: high_pass(d, feat), d's detail finer than the base map's
    feat x feat grid; gated: gate_of(b) * d, d where b is raised. b, d (B, H, W) -> (B, H, W) float32."""
    check_fusion(gamma, 1)
    if fusion == "add":
        x = d.float()
    elif fusion == "highpass":
        x = high_pass(d, feat)
    elif fusion == "gated":
        x = gate_of(b, gate) * d.float()
    else:
        raise ConfigError(f"unknown fusion {fusion!r} (choose from {', '.join(FUSIONS)})", "fusion")
    return (1.0 - gamma) * b.float() + gamma * x
