"""Score new images with a run's trained models: the production path of index -> extract -> infer-base ->
infer-diff -> fuse -> score, applied to images that are not in the run store.

Every step calls the functions the stages use: `images.load_rgb` (decode + resize exactly as `index`),
`extract.images_to_tensor` + `backbone.load_backbone` (as `extract`), `trained.load_model` + `residual_map`
(as `infer-base`), `infer_diff.image_heatmaps` with per-(image, c) generators (as `infer-diff`, heatmaps rounded
to float16 as the store keeps them) and `fusion`'s Eq 17-19 with the run's current `fuse` settings.

Image ids seed the diffusion noise: an image that is a record of the run's dataset gets its record index (so it
scores exactly as the pipeline scored it), any other image -(1 + 60 bits of the sha256 of its bytes) (stable
across calls, never equal to a record index).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.apps.predict.inputs import content_id, identify
from stages.apps.predict.predictor import Predictor
from stages.data.geometry import to_original, valid
from stages.data.images import load_mask, load_rgb
from stages.store.claims import CHUNK


@dataclass
class Prediction:
    path: Path
    category: str | None
    score: float
    threshold: float | None
    verdict: str  # "anomalous" | "normal" | "uncalibrated"
    truth: str | None  # ground truth of a dataset record ("good" or the defect)
    image: np.ndarray  # (S, S, 3) uint8 as scored
    h_base: np.ndarray
    h_st: np.ndarray | None
    h_out: np.ndarray
    gt_mask: np.ndarray | None  # (S, S) uint8 ground truth of a dataset record with a mask
    pixel_threshold: float | None
    pixel_normal: float | None = None  # median calibration-normal pixel (the pictures' colour scale)
    picture: Path | None = None
    seconds: float = 0.0  # scoring wall time of its batch divided by the batch's images (pictures not included)
    orig: tuple[int, int] | None = None  # (width, height) of the file
    resize: str = "squash"  # the run's index --resize: how the image became the square
    h_st_fused: bool = True  # False: h_st is pictured but the fusion did not use it (tune chose gamma 0)
    outside: float | None = None  # distance to the nearest trained category (stages.method.residual.outside_score)
    outside_threshold: float | None = None  # calibrated on the held-out normals (None: uncalibrated or Eq 2's map)

    @property
    def is_outside(self) -> bool:
        """The image looks like none of the run's categories: its verdict compares it with categories it is not."""
        return None not in (self.outside, self.outside_threshold) and self.outside > self.outside_threshold

    def shown(self) -> dict[str, np.ndarray | None]:
        """image, maps and ground truth as a user sees the file: its own aspect (the longer side S). Squashed
        images are unsquashed, the fill of padded ones cut away, a center crop's lost borders read NaN."""
        s = self.image.shape[0]
        if self.orig is None or self.resize == "squash" and self.orig[0] == self.orig[1]:
            return {"image": self.image, "h_base": self.h_base, "h_st": self.h_st, "h_out": self.h_out,
                    "gt_mask": self.gt_mask}
        w, h = self.orig
        w, h = max(1, round(w * s / max(w, h))), max(1, round(h * s / max(w, h)))
        back = lambda m: None if m is None else to_original(m, w, h, self.resize)  # noqa: E731
        rgb = np.stack([np.nan_to_num(back(self.image[..., i].astype(np.float32))) for i in range(3)], -1)
        gt = back(self.gt_mask)
        return {"image": rgb.round().clip(0, 255).astype(np.uint8), "h_base": back(self.h_base),
                "h_st": back(self.h_st), "h_out": back(self.h_out),
                "gt_mask": None if gt is None else (np.nan_to_num(gt) >= 0.5).astype(np.uint8)}

    def row(self) -> dict:
        return {"path": str(self.path), "category": self.category or "", "score": float(self.score),
                "threshold": "" if self.threshold is None else float(self.threshold), "verdict": self.verdict,
                "truth": self.truth or "", "picture": "" if self.picture is None else str(self.picture),
                "outside_score": "" if self.outside is None else round(float(self.outside), 4),
                "outside": "" if self.outside_threshold is None else self.is_outside,
                "batch_seconds_per_image": round(self.seconds, 4)}


def predict(pred: Predictor, paths: list[Path], thresholds, category: str | None = None, progress: bool = True,
            on_batch=None, on_refused=None) -> list[Prediction]:
    """Score every path in chunks of CHUNK images. thresholds: a calibrate.Thresholds or None (uncalibrated).
    on_batch(list[Prediction]) is called after each chunk (pictures are written there, so memory stays flat).
    A file that does not decode (empty, not an image, truncated, too large, gone) is refused: on_refused(path,
    DataError) is called and the others are scored (without on_refused the DataError is raised)."""
    from tqdm import tqdm

    from stages.errors import DataError

    out: list[Prediction] = []
    resize = pred.index.params.get("resize", "squash")
    with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
        for a in range(0, len(paths), CHUNK):
            t0 = time.perf_counter()
            loaded = []
            for p in paths[a : a + CHUNK]:
                try:
                    img, orig = load_rgb(p, pred.size, resize)
                    k = identify(p, pred.index, category)
                    loaded.append((p, k, img, orig, k.record if k.record is not None else content_id(p)))
                except DataError as e:
                    if on_refused is None:
                        raise
                    on_refused(p, e)
            bar.update(len(paths[a : a + CHUNK]) - len(loaded))
            if not loaded:
                continue
            chunk, known, imgs, origs, idl = (list(v) for v in zip(*loaded))
            ids = np.array(idl, dtype=np.int64)
            shows = (np.stack([valid(w, h, pred.size, resize) for w, h in origs]) if resize == "pad" else None)
            b = pred.run(np.stack(imgs), ids, [k.category for k in known], shows)
            dt = (time.perf_counter() - t0) / len(chunk)
            root = Path(pred.index.params["root"])
            batch = []
            for j, (p, k) in enumerate(zip(chunk, known)):
                thr = thresholds.image_threshold(k.category) if thresholds is not None else None
                verdict = "uncalibrated" if thr is None else ("anomalous" if b.scores[j] > thr else "normal")
                gt = load_mask(root / k.mask, origs[j], pred.size, resize) if k.mask else None
                batch.append(Prediction(p, k.category, float(b.scores[j]), thr, verdict, k.defect, imgs[j],
                                        b.h_base[j], None if b.h_st is None else b.h_st[j], b.h_out[j], gt,
                                        thresholds.pixel_threshold(k.category) if thresholds is not None else None,
                                        thresholds.pixel_normal_level(k.category) if thresholds is not None else None,
                                        seconds=dt, orig=origs[j], resize=resize,
                                        h_st_fused=not b.shown_only,
                                        outside=None if b.outside is None else float(b.outside[j]),
                                        outside_threshold=thresholds.outside if thresholds is not None else None))
            if on_batch is not None:
                on_batch(batch)
            for q in batch:  # keep the table, drop the maps
                q.image = q.h_base = q.h_st = q.h_out = q.gt_mask = None  # type: ignore[assignment]
            out.extend(batch)
            bar.update(len(chunk))
    return out


