"""Stage `index`: scan and validate a dataset, decode every image and mask once into the run store.

Downstream stages read images from here, never from the dataset folder: every image is decoded, converted to
RGB and resized exactly once, and a corrupt file is reported here, by name, before any model runs.
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
from .images import load_mask, load_rgb

STAGE = "index"


@dataclass(frozen=True)
class IndexParams:
    root: str
    layout: str = "auto"
    categories: tuple[str, ...] = ()  # empty: every category under root
    image_size: int = 224

    def __post_init__(self) -> None:
        check(self.layout in LAYOUTS, "--layout", f"must be one of {', '.join(LAYOUTS)}", self.layout)
        check(32 <= self.image_size <= 2048 and self.image_size % 16 == 0, "--image-size",
              "must be a multiple of 16 in [32, 2048]", self.image_size)


def _load(root: Path, rec: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    img, orig = load_rgb(resolve_recorded(root, rec["path"]), size)
    mask = load_mask(resolve_recorded(root, rec["mask"]), orig, size) if rec["mask"] else np.zeros((size, size), np.uint8)
    return img, mask


def run(store: RunStore, p: IndexParams, progress: bool = True, workers: int = 2) -> StageResult:
    t0 = time.perf_counter()
    ds = discover(Path(p.root), p.layout, p.categories or None)
    records = [r.to_dict() for r in ds.records]
    params = {
        "root": str(ds.root), "layout": ds.layout, "categories": list(p.categories), "image_size": p.image_size,
        "fingerprint": fingerprint(ds.root, ds.records),
    }
    entry, cached = store.begin(STAGE, params, {})
    n, s = len(records), p.image_size
    summary = (f"{n} images ({sum(r['split'] == 'train' for r in records)} train, "
               f"{sum(r['split'] == 'test' for r in records)} test) in {len(ds.categories)} categories")
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
            loaded = list(pool.map(lambda r: _load(ds.root, r, s), records[a:b]))  # PIL decodes without the GIL
            images[a:b] = np.stack([x[0] for x in loaded])
            masks[a:b] = np.stack([x[1] for x in loaded])
            entry.mark_done(done, a, b)
            bar.update(b - a)
    has_defect = np.concatenate([masks[a : a + 64].any(axis=(1, 2)) for a in range(0, n, 64)]) if n else []
    empty = [r["path"] for r, hit in zip(records, has_defect) if r["mask"] and not hit]
    entry.complete(empty_masks=empty)
    store.set_attr(data_root=str(ds.root))
    note = f"; {len(empty)} defect masks are empty" if empty else ""
    if ds.orphan_masks:
        note += f"; {len(ds.orphan_masks)} masks belong to no image (ignored), e.g. {ds.orphan_masks[0]}"
    return StageResult(STAGE, entry.key, False, time.perf_counter() - t0, summary + note)
