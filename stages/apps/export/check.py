"""`drdc export --check N`: the exported folder, run as a user runs it, against `drdc predict`.

N of the run's test images (spread over its categories) are copied out of the dataset, so that predict, like
infer.py, seeds their masks and noise from the files' bytes. infer.py runs on them in a fresh Python process, per
category, and its scores and maps are compared with predict's on the same copies.
"""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.apps.predict.loop import predict
from stages.apps.predict.predictor import Predictor
from stages.errors import DataError
from stages.store.cache import RunStore

# float32 kernels of two runtimes (onnxruntime or TorchScript against eager torch): the tiny test run agrees to
# 1e-7, the demo run's maps to 1.3e-4 of their maximum and its scores to 7e-6
SCORE_TOLERANCE = 1e-4  # relative
MAP_TOLERANCE = 5e-4  # of the map's maximum


@dataclass
class CheckResult:
    images: int
    categories: list[str]
    score_error: float  # the largest |score - predict's| / |predict's|
    map_error: float  # the largest max |map - predict's| / max |predict's map|
    mode: str

    @property
    def passed(self) -> bool:
        return self.score_error <= SCORE_TOLERANCE and self.map_error <= MAP_TOLERANCE


def spread(records: list[dict], n: int) -> list[dict]:
    """n test records, taken in turn from each category (its order in the index)."""
    by_cat: dict[str, list[dict]] = {}
    for r in records:
        if r["split"] == "test":
            by_cat.setdefault(r["category"], []).append(r)
    out: list[dict] = []
    while len(out) < n and any(by_cat.values()):
        for rows in by_cat.values():
            if rows and len(out) < n:
                out.append(rows.pop(len(rows) // 2))  # from the middle: good and defective ones alike
    return out


def check(store: RunStore, dest: Path, n: int, base_only: bool = False, progress: bool = True) -> CheckResult:
    """Run dest/infer.py on n of the run's test images and compare with predict (the same mode as the export)."""
    pred = Predictor(store, "cpu", base_only=base_only)
    root = Path(pred.index.params["root"])
    chosen = spread(pred.index.attrs["records"], n)
    if not chosen:
        raise DataError(f"{store.name}: the run has no test images to check the export on")
    score_err = map_err = 0.0
    cats = sorted({r["category"] for r in chosen})
    with tempfile.TemporaryDirectory(prefix="drdc-export-check-") as tmp:
        for cat in tqdm(cats, desc="export check", unit="category", disable=not progress):
            files = []
            for r in (r for r in chosen if r["category"] == cat):
                src = root / r["path"]
                files.append(Path(shutil.copyfile(src, Path(tmp) / f"{len(files)}_{cat}_{src.name}")))
            maps_dir = Path(tmp) / f"maps_{cat}"
            cmd = [sys.executable, str(dest / "infer.py"), *map(str, files), "--category", cat, "--maps",
                   str(maps_dir), *(["--base-only"] if pred.mode == "base" else []), "--dir", str(dest)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                last = (res.stderr.strip().splitlines() or ["no output"])[-1]
                raise DataError(f"{dest / 'infer.py'} failed on the {cat} images: {last}")
            rows = list(csv.DictReader(io.StringIO(res.stdout)))
            maps: dict[Path, np.ndarray] = {}
            ref = predict(pred, files, None, cat, progress=False,
                          on_batch=lambda b: maps.update({p.path: p.h_out.copy() for p in b}))
            for k, (row, p) in enumerate(zip(rows, ref, strict=True)):
                score_err = max(score_err, abs(float(row["score"]) - p.score) / max(abs(p.score), 1e-12))
                h, want = np.load(maps_dir / f"{k}_{p.path.stem}.npy"), maps[p.path]
                map_err = max(map_err, float(np.abs(h - want).max() / max(np.abs(want).max(), 1e-12)))
    return CheckResult(len(chosen), cats, score_err, map_err, pred.mode)
