"""Cached heatmaps to H_out: the one place where maps are selected and fused (fuse, predict, ablate and tune
all call it), so a fusion option exists once.

Shapes: k images, K selected diffusion maps (c ascending, then t as in the settings, then l ascending), S_d the
diffusion resolution, S the image size, (h, w) the feature resolution of H_base.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from stages.config.domains import Choice
from stages.config.settings import key_of, setting
from stages.method.anomaly_map import upsample
from stages.method.choices import INITS
from stages.method.fusion import (drdc_map, fuse_normalised, mean_filter, multiscale_base, normalise, norm_stats, refine,
                                  spatio_temporal)
from stages.pipeline.params import FuseParams


@dataclass(frozen=True)
class FusionSettings(FuseParams):
    """fuse's settings resolved against the store (stages.pipeline.selection.resolve), what the diffusion branch
    and Eq 17-19 use: t, c and l are the maps read (t descending, c and l ascending), init is the variant's start,
    and chains: (c, t-list its reverse process runs over); every x0_t depends on the whole t-list (the chain
    starts at its max), so it is the infer-diff entry's, not the fused t. gamma = 0 with no c is base only (a
    normalised H_base when norm is not none). Every setting is FuseParams' (declared once there)."""

    init: str = setting("paper", Choice(INITS), "The variant's start (stages.method.inpaint.INITS).", added=True)
    chains: tuple[tuple[int, tuple[int, ...]], ...] = ()
    source: str = field(default="", compare=False)  # where the settings came from (shown to the user)

    def as_dict(self) -> dict:
        """The settings as fuse keys them and the store's JSON attrs give them back: FuseParams' added settings
        at their defaults left out (settings recorded before an option existed compare equal), the gate only for
        the gated fusion, the image score's own gamma only when it scores a map of its own."""
        d = key_of(self)
        d.pop("source")
        if self.fusion != "gated":
            d.pop("gate")
        if not self.scores_own_map:
            d.pop("image_gamma", None)
        return json.loads(json.dumps(d))  # tuples -> lists

    @property
    def scores_own_map(self) -> bool:
        """Whether image scores come from a map of their own (image_gamma), not from H_out."""
        return self.image_gamma is not None and self.image_gamma != self.gamma and self.uses_diffusion

    def for_image(self) -> "FusionSettings":
        """The settings whose H_out the image score is taken from."""
        return replace(self, gamma=self.image_gamma, image_gamma=None) if self.scores_own_map else self

    @property
    def uses_diffusion(self) -> bool:
        """Whether any map of these settings (H_out, or the image score's own) reads the diffusion maps."""
        return (self.gamma > 0 or bool(self.image_gamma)) and bool(self.c)


def default_settings(t, c, l, n_s: int, test_time_condition: bool, seed: int, norm: str = "none",  # noqa: E741
                     source: str = "") -> FusionSettings:
    """The paper's fusion (gamma 0.9, m 41, spatio-temporal on) over these maps."""
    return FusionSettings(t=tuple(t), c=tuple(c), l=tuple(l), n_s=n_s, test_time_condition=test_time_condition,
                          seed=seed, chains=tuple((v, tuple(t)) for v in sorted(c)), norm=norm, source=source)


def array_name(s: FusionSettings) -> str:
    """The infer-diff entry's array that holds the maps of s.distance."""
    return "feature" if s.distance == "feature" else "heatmaps"


def select(h: np.ndarray | Tensor, params: dict, s: FusionSettings) -> Tensor:
    """One infer-diff entry's heatmaps (k, n_t, n_l, S_d, S_d), its params -> the selected (k, n_t' * n_l', S_d,
    S_d) float32, t as in the settings, then l. Feature maps (k, n_t, S_d, S_d) have one scale, l = 1."""
    ti = [params["t"].index(t) for t in s.t]
    h = h if isinstance(h, Tensor) else torch.from_numpy(np.asarray(h))
    if s.distance == "feature":
        return h[:, ti].float()
    li = [params["l"].index(v) for v in s.l]
    return h[:, ti][:, :, li].float().flatten(1, 2)


def read_diff(entries: dict, s: FusionSettings, pos: np.ndarray | slice) -> Tensor:
    """The selected cached diffusion heatmaps of rows `pos` of infer-diff entries {c: entry}:
    (k, K, S_d, S_d) float32, in FusionSettings order."""
    parts = []
    for c in s.c:
        arr = entries[c].array(array_name(s))
        h = arr[pos] if isinstance(pos, slice) else arr.get_orthogonal_selection((pos,))
        parts.append(select(h, entries[c].params, s))
    return torch.cat(parts, 1)


def source_maps(h_base_feat: Tensor, h_diff: Tensor | None, size: int, s: FusionSettings | None
                ) -> tuple[Tensor, Tensor | None]:
    """(H_base at image size, H^ST at image size or None) (Eq 17; Table 5's multi-scale base when asked)."""
    ms = s is not None and s.multiscale_base
    hb = multiscale_base(h_base_feat, size, s.l) if ms else upsample(h_base_feat.float(), size)
    if s is None or h_diff is None or not s.uses_diffusion:
        return hb, None
    # Eq 17 at the diffusion resolution, then one bilinear upsampling: both are linear, so this equals averaging
    # the upsampled maps, at a fraction of the cost.
    return hb, upsample(spatio_temporal(h_diff), size)


def fuse_maps(h_base_feat: Tensor, h_diff: Tensor | None, size: int, s: FusionSettings | None, c_feat: int,
              stats: tuple[Tensor, Tensor | None] | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
    """h_base_feat (k, h, w), h_diff (k, K, S_d, S_d) or None -> (H_base, H^ST or None, H_out), each (k, S, S)."""
    hb, h_st = source_maps(h_base_feat, h_diff, size, s)
    return hb, h_st, combine(hb, h_st, s, c_feat, stats, h_base_feat.shape[-1])


def image_maps(h_base_feat: Tensor, hb: Tensor, h_st: Tensor | None, h_out: Tensor, s: FusionSettings | None,
               c_feat: int, stats: tuple[Tensor, Tensor | None] | None = None) -> Tensor:
    """The map image scores are taken from: H_out, or with an image gamma of its own (s.image_gamma) the fusion of
    the same source maps at that gamma. (k, S, S)."""
    if s is None or not s.scores_own_map:
        return h_out
    return combine(hb, h_st, s.for_image(), c_feat, stats, h_base_feat.shape[-1])


def combine(hb: Tensor, h_st: Tensor | None, s: FusionSettings | None, c_feat: int,
            stats: tuple[Tensor, Tensor | None] | None = None, feat: int = 14) -> Tensor:
    """H_out from the source maps at image size (Eq 18-19). norm none: Eq 18-19 as printed. Otherwise stats =
    (base (k, 2, S, S), diff (k, 2, S, S) or None), the per-image shift/scale of each source map
    (`NormStats.per_image`), and Eq 19 adds the normalised maps. s.fusion other than add: the diffusion term is
    refined (stages.method.fusion.refine; feat: the side of H_base's own grid, for the high-pass)."""
    if s is None:
        return hb
    if s.norm == "none":
        if h_st is None:
            return hb if s.gamma == 0 else (1.0 - s.gamma) * hb / c_feat
        if s.fusion == "add":
            return drdc_map(hb, h_st[:, None], s.gamma, s.filter, c_feat, 3)  # Eq 18-19
        return refine(hb.float() / c_feat, mean_filter(h_st, s.filter) / 3, s.gamma, s.fusion, feat, s.gate)
    if stats is None:
        raise ValueError(f"combine: norm {s.norm!r} needs the validation normals' statistics")
    h_sst = mean_filter(h_st, s.filter) if h_st is not None else None  # Eq 18
    if s.fusion == "add" or h_sst is None or s.gamma == 0:
        return fuse_normalised(hb, h_sst, s.gamma if h_st is not None else 0.0, stats[0], stats[1])
    return refine(normalise(hb, stats[0]), normalise(h_sst, stats[1]), s.gamma, s.fusion, feat, s.gate)


@dataclass
class NormStats:
    """Per-category shift/scale of each source map, from validation normals only: base, diff (n_cat, 2, S, S)."""

    categories: list[str]
    base: Tensor
    diff: Tensor | None

    def per_image(self, cats: list[str]) -> tuple[Tensor, Tensor | None]:
        """Stats for k images of these categories. A category without validation normals (possible only for
        images outside the run) takes the mean over categories."""
        def pick(t: Tensor) -> Tensor:
            mean = t.mean(0)
            return torch.stack([t[self.categories.index(c)] if c in self.categories else mean for c in cats])
        return pick(self.base), None if self.diff is None else pick(self.diff)

    @staticmethod
    def compute(by_category: dict[str, tuple[Tensor, Tensor | None]], s: FusionSettings) -> "NormStats":
        """by_category: {category: (H_base (n, S, S), H^ST (n, S, S) or None)} of its validation normals, as
        `source_maps` gives them; the diffusion map is normalised after Eq 18's mean filter, as it is fused."""
        cats = list(by_category)
        base = torch.stack([norm_stats(hb, s.norm) for hb, _ in by_category.values()])
        diff = None
        if s.uses_diffusion:
            diff = torch.stack([norm_stats(mean_filter(h, s.filter), s.norm) for _, h in by_category.values()])
        return NormStats(cats, base, diff)

    def save(self, entry, prefix: str = "norm") -> None:
        n = len(self.categories)
        entry.require_array(f"{prefix}_base", tuple(self.base.shape), "float32", chunk=n)[:] = self.base.numpy()
        if self.diff is not None:
            entry.require_array(f"{prefix}_diff", tuple(self.diff.shape), "float32", chunk=n)[:] = self.diff.numpy()
        entry.update(**{f"{prefix}_categories": self.categories})

    @staticmethod
    def load(entry, prefix: str = "norm") -> "NormStats | None":
        if f"{prefix}_categories" not in entry.attrs:
            return None
        diff = torch.from_numpy(entry.array(f"{prefix}_diff")[:]) if entry.has(f"{prefix}_diff") else None
        return NormStats(list(entry.attrs[f"{prefix}_categories"]), torch.from_numpy(entry.array(f"{prefix}_base")[:]),
                         diff)


@dataclass
class CrossFitStats:
    """Statistics for every row: a test row (or an image outside the run) takes those of every validation
    normal (`all`, what a fuse entry stores for predict); a validation row of fold f takes those of fold 1 - f
    (stages.data.validation.folds), so no validation image is normalised by statistics it helped make."""

    all: NormStats
    fold: tuple[NormStats | None, NormStats | None]

    def per_row(self, cats: list[str], row_folds: list[int | None]) -> tuple[Tensor, Tensor | None]:
        picks = []
        for c, f in zip(cats, row_folds):
            other = None if f is None else self.fold[1 - f]
            use = other if other is not None and c in other.categories else self.all  # a 1-normal category
            picks.append(use.per_image([c]))
        return torch.cat([b for b, _ in picks]), None if picks[0][1] is None else torch.cat([d for _, d in picks])

    @staticmethod
    def compute(maps_of, normals: dict[str, np.ndarray], fold: dict[int, int], s: FusionSettings
                ) -> "CrossFitStats":
        """maps_of(positions) -> source_maps of those rows; normals {category: row positions of its validation
        normals}; fold {row position: 0 or 1}."""
        def stats(keep) -> NormStats | None:
            by_cat = {c: maps_of(p) for c, pos in normals.items() if len(p := pos[[keep(k) for k in pos]])}
            return NormStats.compute(by_cat, s) if by_cat else None

        return CrossFitStats(stats(lambda k: True), (stats(lambda k: fold[k] == 0), stats(lambda k: fold[k] == 1)))

    def save(self, entry) -> None:
        """`norm_*` arrays (every validation normal: test rows, new images) and `norm_fold{0,1}_*` (what scores
        the other fold's validation images, e.g. calibration normals in predict)."""
        self.all.save(entry)
        for f, st in enumerate(self.fold):
            if st is not None:
                st.save(entry, f"norm_fold{f}")

    @staticmethod
    def load(entry) -> "CrossFitStats | None":
        all_ = NormStats.load(entry)
        if all_ is None:
            return None
        return CrossFitStats(all_, (NormStats.load(entry, "norm_fold0"), NormStats.load(entry, "norm_fold1")))
