"""Reading cached maps back by category and split: what score, tune, calibrate, ablate and the pictures measure."""
from __future__ import annotations

import numpy as np
import torch

from stages.method.anomaly_map import upsample
from stages.store.cache import Entry


def category_maps(index: Entry, maps_entry: Entry, array: str, category: str, split: str = "test",
                  keep=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(positions in the maps entry's arrays, labels, masks (n,S,S) uint8, maps (n,S,S) float32) of one category's
    images of one split; keep(record) -> bool narrows them further."""
    records = index.attrs["records"]
    rec_idx = maps_entry.array("record")[:]
    pos = np.array([k for k, i in enumerate(rec_idx) if records[i]["category"] == category
                    and records[i]["split"] == split and (keep is None or keep(records[i]))], dtype=np.int64)
    labels = np.array([records[rec_idx[k]]["label"] for k in pos], dtype=np.int64)
    masks = index.array("masks").get_orthogonal_selection((rec_idx[pos],))
    size = masks.shape[-1]
    raw = torch.from_numpy(maps_entry.array(array).get_orthogonal_selection((pos,)).astype(np.float32))
    return pos, labels, masks, upsample(raw, size).numpy()


def content(index: Entry, records: np.ndarray) -> np.ndarray | None:
    """(n, S, S) bool: which pixels of these index records show the image (index --resize pad), or None when
    every pixel does (squash, center-crop)."""
    if not index.has("valid"):
        return None
    return index.array("valid").get_orthogonal_selection((np.asarray(records),)).astype(bool)
