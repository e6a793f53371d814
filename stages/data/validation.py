"""The validation split: train/good images no trainer sees, used as they are and with synthetic defects.

Every setting (fusion, normalisation, epochs, recipe) is chosen on these images, never on the test split:
- validation normals: a fixed, seeded part of train/good per category (`fraction`, at least `minimum`, at most
  half), relabelled split "val" so that `train-base` and `train-diff`, which read split "train", never see them;
- validation anomalies: `copies` copies of each validation normal with one synthetic defect each (stages.data.defects:
  scratches, spots, Perlin-shaped regions, cut-paste patches; kinds taken in turn), with exact masks, appended
  after the dataset's own records as split "val", label 1, defect "synthetic-<kind>".

A synthetic defect is a proxy for a real one: it tells which setting finds *a* local deviation from normal, not
which finds a factory's cracks. Metrics are reported per kind so that a ranking of settings can be checked
across kinds before it is trusted. Pure record bookkeeping here; the index stage paints the pixels.
"""
from __future__ import annotations

import zlib

import numpy as np

from stages.data.defects import KINDS

SYNTHETIC_PREFIX = "synthetic-"


def held_out(records: list[dict], fraction: float, minimum: int, seed: int) -> set[int]:
    """Positions of the train records kept out of training, chosen per category by a seeded permutation."""
    if fraction <= 0:
        return set()
    by_cat: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r["split"] == "train":
            by_cat.setdefault(r["category"], []).append(i)
    out: set[int] = set()
    for cat, idx in by_cat.items():
        k = min(max(minimum, int(round(fraction * len(idx)))), len(idx) // 2)  # never more than half
        rng = np.random.default_rng([seed, zlib.crc32(cat.encode())])
        out.update(idx[j] for j in rng.permutation(len(idx))[:k])
    return out


def with_validation(records: list[dict], fraction: float, minimum: int, copies: int, seed: int,
                    kinds: tuple[str, ...] = KINDS) -> list[dict]:
    """The dataset's records with the held-out ones as split "val", then one synthetic record per (validation
    normal, copy): {"synthetic": kind, "source": position of the normal, "donor": a train image of the same
    category (the cut-paste patch comes from it)}. Deterministic in (records, fraction, minimum, copies, seed, kinds)."""
    val = held_out(records, fraction, minimum, seed)
    out = [dict(r, split="val") if i in val else dict(r) for i, r in enumerate(records)]
    train_of: dict[str, list[int]] = {}
    for i, r in enumerate(out):
        if r["split"] == "train":
            train_of.setdefault(r["category"], []).append(i)
    turn: dict[str, int] = {}
    for i in sorted(val):
        r = records[i]
        for _ in range(copies):
            k = turn.get(r["category"], 0)
            turn[r["category"]] = k + 1
            kind = kinds[k % len(kinds)]  # kinds in turn per category: balanced counts
            rng = np.random.default_rng([seed, i, k])
            donors = train_of[r["category"]]
            out.append({"category": r["category"], "split": "val", "label": 1, "defect": SYNTHETIC_PREFIX + kind,
                        "path": r["path"], "mask": None, "synthetic": kind, "source": i,
                        "donor": int(donors[rng.integers(len(donors))])})
    return out


def paint_seed(seed: int, position: int) -> np.random.Generator:
    """The generator that paints the synthetic record at `position`: the same pixels on every (re)run."""
    return np.random.default_rng([seed, 1_000_003, position])


def is_validation_normal(record: dict) -> bool:
    """A held-out normal (split "val", label 0): what calibration and normalisation statistics may use."""
    return record["split"] == "val" and record["label"] == 0


def folds(records: list[dict]) -> dict[int, int]:
    """Fold 0 or 1 of every validation record: the normals of a category alternate in record order, a synthetic
    copy takes its source's fold. Statistics that score a validation row come from the other fold's normals, so
    neither the image nor the normal it was painted on ever shapes its own score (cross-fitting)."""
    out: dict[int, int] = {}
    turn: dict[str, int] = {}
    for i, r in enumerate(records):
        if is_validation_normal(r):
            k = turn.get(r["category"], 0)
            turn[r["category"]] = k + 1
            out[i] = k % 2
    for i, r in enumerate(records):
        if r.get("synthetic"):
            out[i] = out[r["source"]]
    return out


def kind_of(record: dict) -> str | None:
    """The synthetic defect kind of a validation anomaly, None for any other record."""
    return record.get("synthetic")


def validation_normals(records: list[dict]) -> list[int]:
    """Positions of the index's validation normals (split "val", label 0): no trainer sees them."""
    return [i for i, r in enumerate(records) if is_validation_normal(r)]
