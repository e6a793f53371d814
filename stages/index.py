"""Stage `index`: scan and validate a dataset, decode every image and mask once into the run store.

Downstream stages read images from here, never from the dataset folder: every image is decoded, converted to
RGB and resized exactly once, and a corrupt file is reported here, by name, before any model runs.

The validation split is made here too (stages.validation): held-out train/good images become split "val", and
their copies with synthetic defects are painted into the store as extra records with exact masks, so every
stage downstream treats them like test images (same cache, keys and resume).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .cache import RunStore
from .common import StageResult, check
from .data import LAYOUTS, discover, fingerprint, resolve_recorded
from .defects import paint_defect
from .images import load_mask, load_rgb
from .validation import paint_seed, with_validation

STAGE = "index"


@dataclass(frozen=True)
class IndexParams:
    root: str
    layout: str = "auto"
    categories: tuple[str, ...] = ()  # empty: every category under root
    image_size: int = 224
    val_fraction: float = 0.1  # of train/good per category held out from every trainer (0: none)
    val_min: int = 4  # at least this many validation normals per category (at most half of train/good)
    val_defects: int = 2  # synthetic defective copies of each validation normal
    val_seed: int = 0

    def __post_init__(self) -> None:
        check(self.layout in LAYOUTS, "--layout", f"must be one of {', '.join(LAYOUTS)}", self.layout)
        check(0.0 <= self.val_fraction < 0.5, "--val-fraction", "must be in [0, 0.5)", self.val_fraction)
        check(self.val_min >= 0, "--val-min", "must be >= 0", self.val_min)
        check(0 <= self.val_defects <= 16, "--val-defects", "must be in [0, 16]", self.val_defects)
        check(0 <= self.val_seed < 2**32, "--val-seed", "must be in [0, 2^32)", self.val_seed)
        check(32 <= self.image_size <= 2048 and self.image_size % 16 == 0, "--image-size",
              "must be a multiple of 16 in [32, 2048]", self.image_size)


def _load(root: Path, rec: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    img, orig = load_rgb(resolve_recorded(root, rec["path"]), size)
    mask = load_mask(resolve_recorded(root, rec["mask"]), orig, size) if rec["mask"] else np.zeros((size, size), np.uint8)
    return img, mask


def run(store: RunStore, p: IndexParams, progress: bool = True, workers: int = 2) -> StageResult:
    t0 = time.perf_counter()
    ds = discover(Path(p.root), p.layout, p.categories or None)
    records = with_validation([r.to_dict() for r in ds.records], p.val_fraction, p.val_min, p.val_defects,
                              p.val_seed)
    params = {
        "root": str(ds.root), "layout": ds.layout, "categories": list(p.categories), "image_size": p.image_size,
        "fingerprint": fingerprint(ds.root, ds.records), "val_fraction": p.val_fraction, "val_min": p.val_min,
        "val_defects": p.val_defects, "val_seed": p.val_seed,
    }
    entry, cached = store.begin(STAGE, params, {})
    n, s = len(records), p.image_size
    count = lambda split, label=None: sum(r["split"] == split and label in (None, r["label"]) for r in records)  # noqa: E731
    summary = (f"{n} images ({count('train')} train, {count('val', 0)} validation normals + {count('val', 1)} "
               f"with synthetic defects, {count('test')} test) in {len(ds.categories)} categories")
    if cached:
        return StageResult(STAGE, entry.key, True, time.perf_counter() - t0, summary)
    entry.update(records=records, categories=list(ds.categories), masked_categories=list(ds.masked_categories))
    images = entry.require_array("images", (n, s, s, 3), "uint8")
    masks = entry.require_array("masks", (n, s, s), "uint8")
    done = entry.require_done(n)
    todo = entry.pending(n)
    with ThreadPoolExecutor(workers) as pool, tqdm(total=n, desc="index", unit="img", disable=not progress,
                                                   initial=n - sum(b - a for a, b in todo)) as bar:
        for a, b in todo:
            real = [i for i in range(a, b) if "synthetic" not in records[i]]
            loaded = list(pool.map(lambda i: _load(ds.root, records[i], s), real))  # PIL decodes without the GIL
            img, msk = np.zeros((b - a, s, s, 3), np.uint8), np.zeros((b - a, s, s), np.uint8)
            for i, (x, m) in zip(real, loaded):
                img[i - a], msk[i - a] = x, m
            for i in range(a, b):  # synthetic records come after every real one: their sources are decoded
                if "synthetic" in records[i]:
                    r = records[i]
                    pick = lambda j: img[j - a] if a <= j < b else images[j]  # noqa: E731
                    img[i - a], msk[i - a] = paint_defect(pick(r["source"]), r["synthetic"], paint_seed(p.val_seed, i),
                                                          donor=pick(r["donor"]))
            images[a:b] = img
            masks[a:b] = msk
            entry.mark_done(done, a, b)
            bar.update(b - a)
    has_defect = np.concatenate([masks[a : a + 64].any(axis=(1, 2)) for a in range(0, n, 64)]) if n else []
    empty = [r["path"] for r, hit in zip(records, has_defect) if r["mask"] and not hit]  # synthetic: never empty
    entry.complete(empty_masks=empty)
    store.set_attr(data_root=str(ds.root))
    note = f"; {len(empty)} defect masks are empty" if empty else ""
    if ds.orphan_masks:
        note += f"; {len(ds.orphan_masks)} masks belong to no image (ignored), e.g. {ds.orphan_masks[0]}"
    return StageResult(STAGE, entry.key, False, time.perf_counter() - t0, summary + note)
