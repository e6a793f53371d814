"""The run's trained models loaded once (`Predictor`): a batch of decoded images -> H_base, H^ST, H_out and image
scores, through the functions the stages use (see stages.apps.predict.loop)."""
from __future__ import annotations

from typing import Any, Mapping

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.apps.predict.settings import apply_overrides, fuse_settings, validate
from stages.data.images import to_model_space
from stages.data.validation import folds
from stages.errors import CacheMissError, Message, Option, Step
from stages.method.anomaly_map import image_score
from stages.method.choices import POOL
from stages.method.diffusion import Schedule
from stages.method.inpaint import Noise
from stages.method.residual import residual_map
from stages.models.backbone import load_matching
from stages.pipeline.extract import images_to_tensor
from stages.pipeline.heatmaps import (CrossFitStats, FusionSettings, array_name, fuse_maps, image_maps, select,
                                      source_maps)
from stages.pipeline.infer_base import ResidualStats
from stages.pipeline.infer_diff import InferDiffParams, drawn_heatmaps, sequence_draws
from stages.pipeline.trained import load_model, load_unet, schedule_of
from stages.store.cache import Entry, RunStore
from stages.pipeline.runtime import resolve_device
from stages.config.presets import DEFAULT_PRESET


@dataclass
class Batch:
    """Results for k images: maps at image size S."""

    h_base: np.ndarray  # (k, S, S) float32, H_base upsampled
    h_st: np.ndarray | None  # (k, S, S) float32, diffusion H_ST (Eq 17), None when base only
    h_out: np.ndarray  # (k, S, S) float32, what is scored
    scores: np.ndarray  # (k,) float32
    outside: np.ndarray | None = None  # (k,) float32: distance to the nearest trained category (None: Eq 2's map)
    shown_only: bool = False  # h_st is pictured but not fused (the fusion reads no diffusion map)


class Predictor:
    """The run's trained models, loaded once; `run(images, ids)` scores a batch of decoded images.

    Raises CacheMissError naming the command when the run has no trained base model."""

    def __init__(self, store: RunStore, device: str = "auto", overrides: Mapping[str, Any] | None = None,
                 base_only: bool = False, weights: Path | None = None, preset: str | None = None,
                 show_diffusion: bool = False) -> None:
        """overrides: {FuseParams setting: value} replacing the run's fuse settings (stages.apps.predict.settings:
        OVERRIDES). show_diffusion: when the fusion reads no diffusion map (tune chose gamma 0), still compute the
        run's cached diffusion maps' H^ST for the pictures (`shown_only`: it does not enter H_out or the score)."""
        overrides = dict(overrides or {})
        self.store = store
        # the parameters that give these settings, as calibrate and predict take them (a hint's Step names them)
        self.options: dict[str, Any] = {"base_only": True} if base_only else dict(overrides)
        if weights is not None:
            self.options["weights"] = str(weights)
        require_trained(store)
        self.index = store.current("index")
        self.extract = store.current("extract")
        self.train_base = store.current("train_base")
        self.dev = resolve_device(device)
        self.size = int(self.index.params["image_size"])
        self.c_feat = int(self.extract.attrs["channels"])
        ep = self.extract.params
        self.backbone = load_matching(ep, weights).to(self.dev).eval()
        self.base = load_model(self.train_base, self.dev)
        # H_base as infer-base made it: Eq 2, or the run's residual Gaussians (--residual-norm mahalanobis)
        ib = store.get("infer_base", store.current_keys["infer_base"]) if "infer_base" in store.current_keys else None
        self.residual = ResidualStats.load(ib) if ib is not None else None
        self.notes: list[Message] = []  # what the scores are, and what would make them more (steps, options named)
        if ib is None:
            self.notes.append("no infer-base result in the run: H_base is Eq 2's L2 norm")
        elif self.residual is not None and ib.inputs.get("train_base") != self.train_base.key:
            raise CacheMissError(f"the residual Gaussians of infer-base {ib.key} belong to another base model than "
                                 f"the current {self.train_base.key}; refit them with ", ib.step())
        self.pool = score_pool(store)
        self.fusion: FusionSettings | None = None
        self.unet = None
        self.train_diff: Entry | None = None
        if base_only:
            self.notes.append((Option("base_only"), ": base heatmap H_base only"))
        elif "train_diff" not in store.current_keys:
            self.notes.append(("no trained diffusion model in the run: base heatmap H_base only (train one with ",
                               Step("train_diff", store.name), ")"))
        else:
            self.train_diff = store.current("train_diff")
            self.diff_size = int(self.train_diff.params["size"])
            self.fusion = apply_overrides(fuse_settings(store, preset or store.attr("preset") or DEFAULT_PRESET),
                                          overrides)
            validate(self.fusion, self.diff_size)
            if self.fusion.uses_diffusion:
                self.unet = load_unet(self.train_diff, self.dev)
        self.shown_only: FusionSettings | None = None  # the maps pictured but not fused
        if show_diffusion and self.train_diff is not None and self.unet is None:
            from stages.pipeline.params import FuseParams
            from stages.pipeline.selection import resolve

            try:  # every cached map, as `drdc fuse` reads them by default
                self.shown_only = resolve(store, FuseParams())[0]
            except CacheMissError:
                self.shown_only = None
            if self.shown_only is not None:
                self._shown_unet = load_unet(self.train_diff, self.dev)
        self.stats = None
        if self.fusion is not None and self.fusion.norm != "none":
            e = store.get("fuse", store.current_keys["fuse"])
            self.stats = CrossFitStats.load(e)
            self._fold = folds(self.index.attrs["records"])  # a validation image: the other fold's statistics
            if self.stats is None:
                raise CacheMissError(f"the fuse result {e.key} has no normalisation statistics; rerun ",
                                     Step("fuse", store.name, {"norm": self.fusion.norm}, whole=False))

    @property
    def mode(self) -> str:
        return "base" if self.fusion is None else "fuse"

    def settings(self) -> dict:
        """Everything a score depends on: a calibration holds only for the same settings."""
        d = {"mode": self.mode, "train_base": self.train_base.key, "extract": self.extract.key,
             "image_size": self.size, "pool": self.pool}
        if self.residual is not None:
            d["residual_channels"] = self.residual.channels
        if self.fusion is not None:
            d.update(train_diff=self.train_diff.key, fusion=self.fusion.as_dict())
        return d

    @torch.inference_mode()
    def run(self, images: np.ndarray, ids: np.ndarray, categories: list[str | None] | None = None,
            valid: np.ndarray | None = None) -> Batch:
        """images (k, S, S, 3) uint8 at the run's image size, ids (k,) int64 (record index or content id),
        categories (for normalised fusion: each category's own statistics; None: the mean over categories),
        valid (k, S, S) bool: the pixels that show the image (index --resize pad; None: all)."""
        f_in = self.backbone(images_to_tensor(images, self.dev))
        cats = list(categories) if categories is not None else [None] * len(images)
        f_out = self.base(f_in)
        h_base = (residual_map(f_in, f_out) if self.residual is None  # Eq 2, (k, fs, fs)
                  else self.residual.heatmap(f_in, f_out, cats)).cpu()
        outside = None if self.residual is None else self.residual.outside(f_in, f_out).numpy()
        h_diff = self._diffusion(images, ids, self.fusion, self.unet) if self.unet is not None else None
        stats = (self.stats.per_row(cats, [self._fold.get(int(i)) for i in ids]) if self.stats is not None
                 else None)
        hb, h_st, h_out = fuse_maps(h_base, h_diff, self.size, self.fusion, self.c_feat, stats)
        h_img = image_maps(h_base, hb, h_st, h_out, self.fusion, self.c_feat, stats)  # H_out, or the image's own
        scores = image_score(h_img, self.pool, None if valid is None else torch.from_numpy(valid))
        if h_st is None and self.shown_only is not None:  # pictured only: not in H_out, not in the score
            hd = self._diffusion(images, ids, self.shown_only, self._shown_unet)
            h_st = source_maps(h_base, hd, self.size, self.shown_only)[1]
        return Batch(hb.numpy(), None if h_st is None else h_st.numpy(), h_out.numpy(), scores.numpy(), outside,
                     self.shown_only is not None)

    @torch.inference_mode()
    def outside(self, images: np.ndarray) -> np.ndarray | None:
        """(k,) float32: each image's distance to the nearest trained category (the base map's Gaussians; None
        with Eq 2's map), without the diffusion branch. images (k, S, S, 3) uint8."""
        if self.residual is None:
            return None
        f_in = self.backbone(images_to_tensor(images, self.dev))
        return self.residual.outside(f_in, self.base(f_in)).numpy()

    def _diffusion(self, images: np.ndarray, ids: np.ndarray, s: FusionSettings, unet) -> torch.Tensor:
        """(k, K, S_d, S_d) float32: the heatmaps settings s select, computed as infer-diff does."""
        x = to_model_space(images, self.diff_size).to(self.dev)
        draws = [sequence_draws(diff_params(s, chain, cs), ids, cs, self.diff_size)
                 for chain, cs in chain_groups(s)]
        return diffusion_maps(unet, s, x, [(M.to(self.dev), g) for M, g in draws], self.backbone,
                              self.size, schedule_of(self.train_diff.params))


def chain_groups(s: FusionSettings) -> list[tuple[tuple[int, ...], list[int]]]:
    """The fused c grouped by t-list, as (t-list, its c ascending), in the order of their first c: the c that
    share a reverse process run in one batch, as infer-diff computes them."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for c, chain in s.chains:
        groups.setdefault(tuple(chain), []).append(c)
    return [(chain, sorted(cs)) for chain, cs in groups.items()]


def diff_params(s: FusionSettings, chain: tuple[int, ...], cs: list[int]) -> InferDiffParams:
    """The infer-diff settings whose maps s fuses, for one group of `chain_groups`."""
    return InferDiffParams(t=chain, c=tuple(cs), l=s.l, n_s=s.n_s, test_time_condition=s.test_time_condition,
                           seed=s.seed, init=s.init, distance=s.distance)


def diffusion_maps(unet, s: FusionSettings, x: torch.Tensor, draws: list[tuple[torch.Tensor, Noise]], phi,
                   size_in: int, sched: Schedule) -> torch.Tensor:
    """x (k, 3, S_d, S_d) in model space; draws: (masks, noise) of each group of `chain_groups`, in
    `sequence_draws`' layout -> (k, K, S_d, S_d) float32, the maps s fuses (c ascending), rounded through float16
    as the store keeps them. Predict and the exported graph both call it."""
    per_c: dict[int, torch.Tensor] = {}
    for (chain, cs), (M, noise) in zip(chain_groups(s), draws, strict=True):  # noqa: N806
        maps = drawn_heatmaps(unet, diff_params(s, chain, cs), x, M, noise, len(cs), phi, size_in,
                              sched)[array_name(s)]
        for i, c in enumerate(cs):  # (k, n_t * n_l, S_d, S_d), rounded as the store keeps them
            per_c[c] = select(maps[:, i].cpu().half(), {"t": list(chain), "l": list(s.l)}, s)
    return torch.cat([per_c[c] for c in sorted(per_c)], 1)


def score_pool(store: RunStore) -> int:
    """The pooling kernel of the run's scores (POOL unless `score --pool` said otherwise)."""
    if "score" in store.current_keys:
        e = store.get("score", store.current_keys["score"])
        if e is not None:
            return int(e.params.get("pool", POOL))
    return 16


def require_trained(store: RunStore) -> None:
    """A clear error before any model loads when the base model is missing."""
    if "train_base" not in store.current_keys:
        raise CacheMissError(f"the run {store.name} has no trained base model; run ", Step("train_base", store.name),
                             " (after index and extract) first")
