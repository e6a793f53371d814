"""Stage `infer-base`: the base heatmap H_base = ||F_in - F_out||_2 (Eq 2) of every validation and test image.

Stored at feature resolution (test, h_feat, w_feat) exactly as Eq 2 defines it; consumers upsample it to the
image with `stages.method.anomaly_map.upsample` so every consumer sees the same interpolation.

Option `--residual-norm mahalanobis` (stages.method.residual): the residual's norm under a per-category, per-position
Gaussian of the residuals of the images train-base fitted (never validation or test images). Its statistics are
saved with the entry (files/residual.pt, like a checkpoint: every array of an entry is per image), so predict and
export score new images the same way.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from stages.data.dataset import EVAL_SPLITS, split_indices, split_train
from stages.errors import ConfigError
from stages.method.residual import (fit_gaussian, mahalanobis, outside_score, residual_map, stage_channels)
from stages.models.reconstruction import UniADReconstruction, residual
from stages.pipeline.chunked import chunks
from stages.pipeline.trained import load_model
from stages.pipeline import dist
from stages.store.cache import Entry, RunStore
from stages.store.checkpoint import atomic_save, load_weights, save_tensors
from stages.pipeline.runtime import StageResult, resolve_device
from stages.pipeline.params import InferBaseParams  # noqa: F401 (torch-free, re-exported)

STAGE = "infer_base"
RESIDUAL_FILE = "residual.pt"  # the Gaussians of --residual-norm mahalanobis: mu (K, P, C'), prec (K, P, C', C')


class ResidualStats:
    """The per-category Gaussians of an infer-base entry: categories (K), channels (C'), mu (K, P, C'),
    prec (K, P, C', C'). `heatmap` scores rows of a known category with its own Gaussian, and a row of unknown
    category (None) with the nearest one (the smallest distance at each position)."""

    def __init__(self, categories: list[str], channels: list[int], mu: torch.Tensor, prec: torch.Tensor) -> None:
        self.categories, self.channels, self.mu, self.prec = list(categories), list(channels), mu, prec

    @classmethod
    def load(cls, entry: Entry) -> "ResidualStats | None":
        """The entry's Gaussians (None for Eq 2). A missing or damaged file is a StoreError naming the fix."""
        if entry.params.get("residual_norm", "l2") == "l2":
            return None
        cats, channels = entry.attrs["residual_categories"], entry.attrs["residual_channels"]
        k, p, c = len(cats), entry.array("h_base").shape[-1] ** 2, len(channels)
        held = nn.Module()  # load_weights' checks: weights-only, the expected shapes, one error line
        held.register_buffer("mu", torch.zeros(k, p, c))
        held.register_buffer("prec", torch.zeros(k, p, c, c))
        load_weights(held, entry.path / "files" / RESIDUAL_FILE, entry)
        return cls(cats, channels, held.mu, held.prec)

    def heatmap(self, f_in: torch.Tensor, f_out: torch.Tensor, categories: list[str | None]) -> torch.Tensor:
        """(B, C, h, w) x2, B categories -> H_base (B, h, w) float32."""
        unknown = sorted({c for c in categories if c is not None and c not in self.categories})
        if unknown:
            raise ValueError(f"categories {unknown} have no residual statistics (run has {self.categories})")
        k = torch.tensor([self.categories.index(c) if c is not None else -1 for c in categories])
        return residual_map(f_in.cpu(), f_out.cpu(), self.channels, self.mu, self.prec.double(), k).float()

    def outside(self, f_in: torch.Tensor, f_out: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) x2 -> (B,) float32: stages.method.residual.outside_score under the run's Gaussians (an
        image far from every trained category scores high, whatever category it is said to be)."""
        r = residual(f_in.cpu(), f_out.cpu())[:, self.channels]
        return outside_score(mahalanobis(r, self.mu, self.prec.double())).float()


def _fit(model: UniADReconstruction, feats, records: list[dict], trained: Entry, channels: list[int],
         dev: torch.device, progress: bool) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Gaussians of the residuals of train-base's own fit images, per category (index order)."""
    tp = trained.params
    fit, _ = split_train(records, float(tp.get("holdout", 0.0)), int(tp.get("seed", 0)))
    cats = sorted({records[i]["category"] for i in fit})
    mus, precs = [], []
    positions = feats.shape[-2] * feats.shape[-1]  # one Ledoit-Wolf fit each, per category: the long part
    with tqdm(total=len(cats) * positions, desc="residual Gaussians", unit="position", disable=not progress) as bar:
        for cat in cats:
            bar.set_postfix_str(cat, refresh=False)
            idx = np.array([i for i in fit if records[i]["category"] == cat])
            res = []
            for a in range(0, len(idx), 32):
                f_in = torch.from_numpy(feats.get_orthogonal_selection((idx[a:a + 32],))).to(dev)
                res.append((f_in - model(f_in)).cpu()[:, channels])
            mu, prec = fit_gaussian(torch.cat(res), on_position=lambda: bar.update(1))
            mus.append(mu.numpy()), precs.append(prec.numpy())
    return cats, np.stack(mus), np.stack(precs)


def run(store: RunStore, p: InferBaseParams = InferBaseParams(), device: str = "auto",
        progress: bool = True) -> StageResult:
    t0 = time.perf_counter()
    extract = store.current("extract")
    trained = store.current("train_base")
    index = store.get("index", extract.inputs["index"])
    dev = resolve_device(device)
    records = index.attrs["records"]
    try:  # before any entry is made
        channels = stage_channels(extract.attrs["backbone_channels"], p.residual_stages)
    except ValueError as e:
        raise ConfigError(f"{e} (the backbone's stages)", "residual_stages") from None
    entry, cached = store.begin(STAGE, p.key_params(), {"extract": extract.key, "train_base": trained.key},
                                exclusive=False)
    idx = split_indices(records, EVAL_SPLITS)
    n = len(idx)
    feats = extract.array("features")
    fs = feats.shape[-1]
    what = "" if p.residual_norm == "l2" else f", {p.residual_norm} residual norm"
    if cached:
        return StageResult(STAGE, entry.key, True, time.perf_counter() - t0, f"{n} validation + test heatmaps{what}")
    dist.start_together(dev)  # torchrun: ranks begin claiming at once, so each takes its own share
    model = load_model(trained, dev)
    stats = None
    with torch.inference_mode():
        if p.residual_norm == "mahalanobis":  # deterministic: every rank fits the same Gaussians
            cats, mu, prec = _fit(model, feats, records, trained, channels, dev, progress)
            if dist.is_main():
                atomic_save(lambda tmp: save_tensors({"mu": torch.from_numpy(mu), "prec": torch.from_numpy(prec)}, tmp),
                            entry.files / RESIDUAL_FILE)
                entry.update(residual_categories=cats, residual_channels=channels)
            stats = ResidualStats(cats, channels, torch.from_numpy(mu), torch.from_numpy(prec))
        entry.require_array("record", (n,), "int64")[:] = idx
        maps = entry.require_array("h_base", (n, fs, fs), "float32")
        for a, b in chunks([entry], n, "infer-base", progress, shared=True):
            f_in = torch.from_numpy(feats.get_orthogonal_selection((idx[a:b],))).to(dev)
            f_out = model(f_in)
            h = (residual_map(f_in, f_out) if stats is None  # Eq 2
                 else stats.heatmap(f_in, f_out, [records[i]["category"] for i in idx[a:b]]))
            maps[a:b] = h.cpu().numpy()
    entry.complete(device=str(dev))
    return StageResult(STAGE, entry.key, False, time.perf_counter() - t0,
                       f"{n} validation + test heatmaps ({fs}x{fs}){what}")
