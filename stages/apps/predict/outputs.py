"""What `drdc predict --out DIR` writes: predictions.csv and .json, and one picture (and binary mask) per image."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from typing import TYPE_CHECKING

from stages.apps.outputs import Outputs, fold
from stages.data.geometry import to_original

if TYPE_CHECKING:
    from stages.apps.predict.loop import Prediction


RESULTS = ("predictions.csv", "predictions.json")
PICTURE, MASK = ".png", "_mask.png"


def write_results(rows: list[Prediction], dest: Path, meta: dict, outs: Outputs) -> tuple[Path, Path]:
    """dest/predictions.csv (one row per image) and dest/predictions.json (meta + the same rows)."""
    csv_path, json_path = dest / RESULTS[0], dest / RESULTS[1]
    recs = [p.row() for p in rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(recs[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(recs)
    outs.write_text(csv_path, buf.getvalue())
    outs.write_text(json_path, json.dumps({**meta, "predictions": recs}, indent=1))
    return csv_path, json_path


def picture_writer(dest: Path, names: dict[Path, str], shown: dict[Path, str], masks: bool, full_size: bool = False,
                   outs: Outputs | None = None):
    """on_batch callback: one figure per image (and a binary mask when a pixel threshold exists and masks), each
    under the name claimed for it."""
    from stages.apps.predict.figures import save_mask, save_prediction  # matplotlib: only when pictures are drawn

    outs = outs or Outputs()

    def write(batch: list[Prediction]) -> None:
        for p in batch:
            cat = p.category or "unknown category"
            thr = "" if p.threshold is None else f" (threshold {p.threshold:.4g})"
            truth = f" · truth: {p.truth}" if p.truth else ""
            far = " · OUTSIDE the run's categories" if p.is_outside else ""
            size = f" · {p.orig[0]}x{p.orig[1]} px" if p.orig else ""
            title = f"{shown[p.path]}{size} · {cat} · score {p.score:.4g}{thr} · {p.verdict}{far}{truth}"
            view = p.shown()  # the file's own aspect, whatever the run's --resize
            picture = dest / names[p.path]
            if fold(picture) not in outs.claimed:
                outs.claim(picture, "out")
            p.picture = outs.write(picture, lambda tmp: save_prediction(
                tmp, image=view["image"], h_base=view["h_base"], h_st=view["h_st"], h_out=view["h_out"], h_st_fused=p.h_st_fused, title=title,
                verdict=p.verdict, pixel_threshold=p.pixel_threshold, pixel_normal=p.pixel_normal,
                gt_mask=view["gt_mask"]))
            if masks and p.pixel_threshold is not None:
                # full size: H_out mapped back onto the file's own pixels (a center crop's lost borders: 0)
                h = to_original(p.h_out, *p.orig, p.resize) if full_size and p.orig else p.h_out
                mask = picture.with_name(picture.name[: -len(PICTURE)] + MASK)
                if fold(mask) not in outs.claimed:
                    outs.claim(mask, "out")
                outs.write(mask, lambda tmp: save_mask(tmp, h, p.pixel_threshold))
    return write
