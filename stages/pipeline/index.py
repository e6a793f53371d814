"""Stage `index`: scan and validate a dataset, decode every image and mask once into the run store.

Downstream stages read images from here, never from the dataset folder: every image is decoded, converted to
RGB and resized exactly once, and a corrupt file is reported here, by name, before any model runs.

The validation split is made here too (stages.data.validation): held-out train/good images become split "val", and
their copies with synthetic defects are painted into the store as extra records with exact masks, so every
stage downstream treats them like test images (same cache, keys and resume).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from stages.data.dataset import discover, fingerprint, resolve_recorded
from stages.data.defects import paint_defect
from stages.data.geometry import valid
from stages.data.images import load_mask, load_rgb
from stages.data.validation import paint_seed, with_validation
from stages.pipeline.chunked import chunks
from stages.store.cache import RunStore
from stages.store.claims import CHUNK
from stages.pipeline.runtime import StageResult
from stages.config.settings import key_of
from stages.pipeline.params import IndexParams  # noqa: F401 (torch-free, re-exported)

STAGE = "index"


def _load(root: Path, rec: dict, size: int, resize: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    img, orig = load_rgb(resolve_recorded(root, rec["path"]), size, resize)
    mask = (load_mask(resolve_recorded(root, rec["mask"]), orig, size, resize) if rec["mask"]
            else np.zeros((size, size), np.uint8))
    return img, mask, orig


def _paint_inside(source: np.ndarray, kind: str, seed: int, position: int, donor: np.ndarray,
                  inside: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """paint_defect, kept to the pixels that show the image (pad: not the fill); a defect that falls wholly in
    the fill is drawn again from the next generator, so every synthetic record has defect pixels to score."""
    for attempt in range(16):
        rng = paint_seed(seed, position) if attempt == 0 else np.random.default_rng([seed, position, attempt])
        img, msk = paint_defect(source, kind, rng, donor=donor)
        if inside is None:
            return img, msk
        msk = msk * inside
        if msk.any():
            img = np.where(inside[..., None], img, source)
            return img, msk.astype(np.uint8)
    return source, msk.astype(np.uint8)  # an image almost all fill: no room for a defect (its mask stays empty)


def run(store: RunStore, p: IndexParams, progress: bool = True, workers: int = 2) -> StageResult:
    t0 = time.perf_counter()
    ds = discover(Path(p.root), p.layout, p.categories or None)
    records = with_validation([r.to_dict() for r in ds.records], p.val_fraction, p.val_min, p.val_defects,
                              p.val_seed, p.val_kinds)
    # the root and layout as found; squash and the classic kinds keep the keys of runs made before those options
    params = {**key_of(p), "root": str(ds.root), "layout": ds.layout,
              "fingerprint": fingerprint(ds.root, ds.records, ds.sources)}
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
    content = entry.require_array("valid", (n, s, s), "uint8") if p.resize == "pad" else None  # 1: the image
    has_defect = np.zeros(n, bool)  # filled as chunks are written; chunks done by an earlier run are read after
    unseen = np.ones(n, bool)
    with ThreadPoolExecutor(workers) as pool:
        for a, b in chunks([entry], n, "index", progress):
            real = [i for i in range(a, b) if "synthetic" not in records[i]]
            loaded = list(pool.map(lambda i: _load(ds.root, records[i], s, p.resize), real))  # PIL: no GIL
            img, msk = np.zeros((b - a, s, s, 3), np.uint8), np.zeros((b - a, s, s), np.uint8)
            inside = np.ones((b - a, s, s), np.uint8)
            for i, (x, m, (w, h)) in zip(real, loaded):
                img[i - a], msk[i - a] = x, m
                if content is not None:
                    inside[i - a] = valid(w, h, s, p.resize)
            for i in range(a, b):  # synthetic records come after every real one: their sources are decoded
                if "synthetic" in records[i]:
                    r = records[i]
                    pick = lambda j, arr=img, full=images: arr[j - a] if a <= j < b else full[j]  # noqa: E731
                    where = None
                    if content is not None:
                        where = pick(r["source"], inside, content).astype(bool)
                        inside[i - a] = where
                    img[i - a], msk[i - a] = _paint_inside(pick(r["source"]), r["synthetic"], p.val_seed, i,
                                                           pick(r["donor"]), where)
            images[a:b] = img
            masks[a:b] = msk
            has_defect[a:b], unseen[a:b] = msk.any(axis=(1, 2)), False
            if content is not None:
                content[a:b] = inside
    for a in np.flatnonzero(unseen[::CHUNK]) * CHUNK:  # a resumed run: the chunks written before
        has_defect[a:a + CHUNK] = masks[a:a + CHUNK].any(axis=(1, 2))
    empty = [r["path"] for r, hit in zip(records, has_defect) if r["mask"] and not hit]  # synthetic: never empty
    entry.complete(empty_masks=empty)
    store.set_attr(data_root=str(ds.root))
    note = f"; {len(empty)} defect masks are empty" if empty else ""
    if ds.orphan_masks:
        note += f"; {len(ds.orphan_masks)} masks belong to no image (ignored), e.g. {ds.orphan_masks[0]}"
    return StageResult(STAGE, entry.key, False, time.perf_counter() - t0, summary + note)
