"""The modules `drdc export` traces: predict's computation, with its random draws as inputs.

Every graph takes the category as an index into the run's categories (the manifest's "categories"), -1 for an
image of unknown category: a residual-Gaussian base map then takes the nearest Gaussian at each position, and
normalised fusion the mean of the categories' statistics, as `drdc predict` does without --category.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from stages.apps.predict.predictor import Predictor, chain_groups, diffusion_maps
from stages.data.images import model_space
from stages.method.anomaly_map import upsample
from stages.method.inpaint import n_draws
from stages.method.residual import residual_map
from stages.pipeline.heatmaps import fuse_maps, image_maps
from stages.pipeline.trained import schedule_of


def lookup(categories: list[str], known: list[str], missing: int) -> Tensor:
    """(len(categories),) int64: each run category's row in `known`, or `missing` where it has none."""
    return torch.tensor([known.index(c) if c in known else missing for c in categories], dtype=torch.long)


def pick(lut: Tensor, category: Tensor, unknown: int) -> Tensor:
    """Each row's index through lut; a category of -1 gives `unknown`."""
    return torch.where(category >= 0, lut[category.clamp(min=0)], torch.full_like(category, unknown))


class BaseGraph(nn.Module):
    """image (B, 3, S, S) in [0, 1], category (B,) int64 -> H_base (B, S, S): backbone, reconstruction, Eq 2 (or
    the run's residual Gaussians, infer-base --residual-norm mahalanobis), bilinear upsampling."""

    def __init__(self, pred: Predictor) -> None:
        super().__init__()
        self.backbone, self.base, self.size = pred.backbone, pred.base, pred.size
        res = pred.residual
        self.mahalanobis = res is not None
        on = self.mahalanobis  # without the Gaussians (None buffers) residual_map is Eq 2
        cats = pred.index.attrs["categories"]
        self.register_buffer("lut", lookup(cats, res.categories, -1) if on else None)  # -1: the nearest
        self.register_buffer("channels", torch.tensor(res.channels, dtype=torch.long) if on else None)
        self.register_buffer("mu", res.mu.float() if on else None)  # (K, P, C')
        self.register_buffer("prec", res.prec.float() if on else None)  # (K, P, C', C'): float32 in the graph

    def features(self, images: Tensor, category: Tensor) -> tuple[Tensor, Tensor]:
        """(the backbone's features F_in, H_base at the feature resolution (B, h, w))."""
        f_in = self.backbone(images)
        k = pick(self.lut, category, -1) if self.mahalanobis else None
        return f_in, residual_map(f_in, self.base(f_in), self.channels, self.mu, self.prec, k)

    def forward(self, images: Tensor, category: Tensor) -> Tensor:
        return upsample(self.features(images, category)[1], self.size)


class UNetGraph(nn.Module):
    """(x_t (B, 3, s, s), t (B,) int64, I_in (B, 3, s, s)) -> eps: the conditional UNet alone."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.unet(x_t, cond, t)


def draw_layout(pred: Predictor) -> list[dict]:
    """The diffusion graph's c in input order (groups of `chain_groups`, c ascending in each): what a caller
    draws for each, from image id r's generators (stages.method.masks.image_generator(seed, r, stream))."""
    s = pred.fusion
    return [{"c": c, "t": list(chain), "mask_stream": 2 * c, "noise_stream": 2 * c + 1,
             "noise_draws": n_draws(len(chain), s.test_time_condition)}
            for chain, cs in chain_groups(s) for c in cs]


class DRDCGraph(nn.Module):
    """Predict's H_out from an image and its random draws.

    image (B, 3, S, S) in [0, 1]; category (B,) int64;
    with the diffusion branch also masks (B, n_c, n_s, s, s) (1 = known pixel) and noise (B, n_c, D, n_s, 3, s, s):
    for the n-th c of `draw_layout`, its masks M_i and its first noise_draws draws of N(0, 1) noise (D: the most
    draws any c makes; the rest is unused) -> H_out, H_base (and H^ST with the diffusion branch), each (B, S, S)."""

    def __init__(self, pred: Predictor) -> None:
        super().__init__()
        self.base_graph = BaseGraph(pred)
        self.fusion, self.c_feat, self.size = pred.fusion, pred.c_feat, pred.size
        self.unet = pred.unet
        self.diff_size = getattr(pred, "diff_size", None)
        self.sched = None if pred.unet is None else schedule_of(pred.train_diff.params)
        self.groups = chain_groups(self.fusion) if pred.unet is not None else []
        self.normalised = pred.stats is not None
        if self.normalised:
            st = pred.stats.all  # every validation normal's statistics: an image outside the run
            self.register_buffer("stat_lut", lookup(pred.index.attrs["categories"], st.categories,
                                                    len(st.categories)))
            self.register_buffer("base_stats", torch.cat([st.base, st.base.mean(0, keepdim=True)]).float())
            self.register_buffer("diff_stats", None if st.diff is None else
                                 torch.cat([st.diff, st.diff.mean(0, keepdim=True)]).float())

    def _h_diff(self, images: Tensor, masks: Tensor, noise: Tensor) -> Tensor:
        s = self.diff_size
        x = model_space(images * 255.0, s)  # as predict's to_model_space of the uint8 image
        draws, o = [], 0
        for chain, cs in self.groups:
            n, nd = len(cs), n_draws(len(chain), self.fusion.test_time_condition)
            m = masks[:, o:o + n].reshape(-1, 1, s, s)  # (B * n * n_s, 1, s, s): image, c, i
            z = noise[:, o:o + n, :nd].permute(2, 0, 1, 3, 4, 5, 6).reshape(nd, -1, 3, s, s)
            draws.append((m, z))
            o += n
        return diffusion_maps(self.unet, self.fusion, x, draws, self.base_graph.backbone, self.size, self.sched)

    def forward(self, images: Tensor, category: Tensor, masks: Tensor | None = None,
                noise: Tensor | None = None) -> tuple[Tensor, ...]:
        _, h_feat = self.base_graph.features(images, category)
        h_diff = self._h_diff(images, masks, noise) if self.unet is not None else None
        stats = None
        if self.normalised:
            k = pick(self.stat_lut, category, self.base_stats.shape[0] - 1)
            stats = (self.base_stats[k], None if self.diff_stats is None else self.diff_stats[k])
        hb, h_st, h_out = fuse_maps(h_feat, h_diff, self.size, self.fusion, self.c_feat, stats)
        if self.fusion.scores_own_map:  # the image score's own map, last
            return h_out, hb, h_st, image_maps(h_feat, hb, h_st, h_out, self.fusion, self.c_feat, stats)
        return (h_out, hb) if h_st is None else (h_out, hb, h_st)
