"""The paper's Table 1: how much pixel AUROC even the ground truth loses at a coarse resolution.

Protocol (Sec 3.2): "we downsample the ground-truth mask directly to a lower resolution, and then upsample it back
to the original size", then score the upsampled map against the original mask with pixel AUROC over all test
images of a category (good ones included), and average over categories. The paper names no interpolation. Defaults:

* down ``nearest-exact``: "directly" and the paper's remark that "binary masks can lose thin defects during
  downsampling" mean the small mask stays binary, so one pixel per s x s block is kept. ``nearest-exact`` keeps
  the block's centre pixel; ``nearest`` (torch/OpenCV's legacy rule) keeps its top-left one, which shifts the mask
  by (s-1)/2 pixels before upsampling and so measures misalignment too (available as an option).
* up ``bilinear``: the way every heatmap in this pipeline (and UniAD's H_base) reaches image resolution
  (stages.method.anomaly_map.upsample), so the bound speaks about the model's own upsampling.

No model, no cache entry: the masks come from the dataset (decoded like the index stage does) or from a run's index.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stages.apps.choices import BoundParams  # noqa: F401 (re-exported: its home is torch-free)
from stages.data.dataset import discover, split_indices
from stages.data.images import image_size, load_mask
from stages.errors import DataError, Option
from stages.method.anomaly_map import upsample
from stages.method.metrics import pixel_auroc



@dataclass
class CategoryMasks:
    """Test ground truth of one category at image resolution: masks (N, S, S) uint8 in {0, 1}."""

    name: str
    masks: np.ndarray
    n_defect_images: int = field(default=0)


def rescale(masks: np.ndarray, scale: int, down: str = "nearest-exact", up: str = "bilinear") -> np.ndarray:
    """(N, S, S) binary masks -> (N, S, S) float32 maps: down to S/scale with `down`, back to S with `up`."""
    size = masks.shape[-1]
    x = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))
    if scale == 1:
        return x.numpy()
    small = F.interpolate(x[:, None], size=(size // scale, size // scale), mode=down)[:, 0]
    if up == "bilinear":
        return upsample(small, size).numpy()
    return F.interpolate(small[:, None], size=(size, size), mode=up)[:, 0].numpy()


def masks_from_data(root: Path, size: int, categories: tuple[str, ...] | None = None,
                    progress: bool = True) -> list[CategoryMasks]:
    """Test masks of every category with ground truth under root (normal images: all-zero masks)."""
    ds = discover(root, "auto", categories or None)
    if not ds.masked_categories:
        raise DataError(f"{ds.root}: no category has a ground_truth folder; Table 1 needs pixel masks")
    tests = [r for r in ds.records if r.split == "test" and r.category in ds.masked_categories]
    masks = np.zeros((len(tests), size, size), np.uint8)
    for i, r in enumerate(tqdm(tests, desc="masks", unit="img", disable=not progress)):
        if r.mask:  # the image header gives the size the mask must have
            masks[i] = load_mask(ds.root / r.mask, image_size(ds.root / r.path), size)
    cats = np.array([r.category for r in tests])
    return [CategoryMasks(c, masks[cats == c], sum(r.label for r in tests if r.category == c))
            for c in ds.masked_categories]


def masks_from_index(index, categories: tuple[str, ...] | None = None) -> list[CategoryMasks]:
    """The same from a run's index entry (masks already decoded and resized there)."""
    records = index.attrs["records"]
    masked = list(index.attrs["masked_categories"])
    if categories:
        known = index.attrs["categories"]
        missing = [c for c in categories if c not in known]
        if missing:
            raise DataError(Option("category"), f": the run has no category {', '.join(missing)} (it has: "
                            f"{', '.join(known)})")
        masked = [c for c in masked if c in categories]
    if not masked:
        raise DataError("the run's index has no category with ground-truth masks; Table 1 needs pixel masks")
    test = split_indices(records, "test")
    out = []
    for c in masked:
        pos = np.array([i for i in test if records[i]["category"] == c], dtype=np.int64)
        out.append(CategoryMasks(c, index.array("masks").get_orthogonal_selection((pos,)),
                                 sum(records[i]["label"] for i in pos)))
    return out


def bound_table(cats: list[CategoryMasks], p: BoundParams, progress: bool = True) -> list[dict]:
    """Rows {'category', 'images', '1/s': pixel AUROC or None} per category, then the mean over categories.
    None where a category's test masks hold no defect pixel (nothing to localise)."""
    rows = []
    with tqdm(total=len(cats) * len(p.scales), desc="bound", unit="map", disable=not progress) as bar:
        for c in cats:
            row: dict = {"category": c.name, "images": int(c.masks.shape[0])}
            usable = bool(c.masks.any()) and not bool(c.masks.all())
            for s in p.scales:
                row[column(s)] = pixel_auroc(c.masks, rescale(c.masks, s, p.down, p.up)) if usable else None
                bar.update(1)
            rows.append(row)
    mean: dict = {"category": "mean", "images": sum(r["images"] for r in rows)}
    for s in p.scales:
        vals = [r[column(s)] for r in rows if r[column(s)] is not None]
        mean[column(s)] = float(np.mean(vals)) if vals else None
    return rows + [mean]


def column(scale: int) -> str:
    """The paper's column header for a scale: '1', '1/2', ... '1/16'."""
    return "1" if scale == 1 else f"1/{scale}"
