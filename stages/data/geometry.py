"""How an image of any aspect ratio becomes the size x size square every stage works on, and how a map goes back.

squash       resize to size x size; the aspect changes (the paper's and anomalib's default, and drdc's).
pad          scale the longer side to size, keep the aspect, fill the rest by repeating the edge pixels (masks:
             0); the content box is recorded and the pixels outside it are never scored.
center-crop  scale the shorter side to size, keep the aspect, keep the middle square; what falls outside it is
             lost (for the image and its mask alike).

Why it matters: a dataset whose defective images have other aspect ratios than its good ones (MTD: median good
294x330, fray 554x252) leaks the aspect into every score of a squashed image, for drdc and for every peer.

Frame coordinates: the square. `Layout` places the scaled image (sw x sh) at (ox, oy) in the frame: ox, oy >= 0
for pad (the rest is fill), <= 0 for center-crop (the scaled image overhangs the frame).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from stages.data.choices import RESIZES  # noqa: F401 (plain Python, re-exported)


@dataclass(frozen=True)
class Layout:
    sw: int  # scaled width and height of the image
    sh: int
    ox: int  # where the scaled image's top-left corner sits in the frame
    oy: int
    size: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1): the frame pixels that show the image (the whole frame unless padded)."""
        return (max(self.ox, 0), max(self.oy, 0), min(self.ox + self.sw, self.size), min(self.oy + self.sh, self.size))


def layout(w: int, h: int, size: int, mode: str) -> Layout:
    """Where an original w x h image lands in the size x size frame under `mode` (RESIZES)."""
    if mode == "squash":
        return Layout(size, size, 0, 0, size)
    if mode not in RESIZES:
        raise ValueError(f"resize mode {mode!r}; expected one of {', '.join(RESIZES)}")
    scale = size / (max(w, h) if mode == "pad" else min(w, h))
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    if mode == "pad":
        sw, sh = min(sw, size), min(sh, size)
    else:
        sw, sh = max(sw, size), max(sh, size)
    return Layout(sw, sh, (size - sw) // 2, (size - sh) // 2, size)


def fit(img: Image.Image, size: int, mode: str, resample: Image.Resampling, fill: str = "edge") -> np.ndarray:
    """img -> (size, size[, C]) uint8 array under `mode`; fill: 'edge' (images) or 'zero' (masks) for pad."""
    lay = layout(*img.size, size, mode)
    a = np.asarray(img.resize((lay.sw, lay.sh), resample))
    if mode == "pad":
        pad = [(lay.oy, size - lay.sh - lay.oy), (lay.ox, size - lay.sw - lay.ox)] + [(0, 0)] * (a.ndim - 2)
        a = np.pad(a, pad, mode="edge") if fill == "edge" else np.pad(a, pad)
    elif mode == "center-crop":
        a = a[-lay.oy : -lay.oy + size, -lay.ox : -lay.ox + size]
    return np.ascontiguousarray(a)


def valid(w: int, h: int, size: int, mode: str) -> np.ndarray:
    """(size, size) bool: the frame pixels that show the image."""
    x0, y0, x1, y1 = layout(w, h, size, mode).box
    out = np.zeros((size, size), dtype=bool)
    out[y0:y1, x0:x1] = True
    return out


def to_original(amap: np.ndarray, w: int, h: int, mode: str) -> np.ndarray:
    """A (size, size) float map of the frame -> (h, w) float32 over the original image (bilinear). Under
    center-crop the cut-away borders were never seen: they read NaN."""
    size = amap.shape[-1]
    lay = layout(w, h, size, mode)
    m = Image.fromarray(np.asarray(amap, dtype=np.float32), mode="F")
    if mode == "squash":
        return np.asarray(m.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    if mode == "pad":
        x0, y0, x1, y1 = lay.box
        return np.asarray(m.crop((x0, y0, x1, y1)).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    # center-crop: the frame covers [-ox, -ox + size) x [-oy, -oy + size) of the scaled image
    sx, sy = w / lay.sw, h / lay.sh
    x0, y0 = round(-lay.ox * sx), round(-lay.oy * sy)
    bw, bh = max(1, round(size * sx)), max(1, round(size * sy))
    out = np.full((h, w), np.nan, dtype=np.float32)
    out[y0 : y0 + bh, x0 : x0 + bw] = np.asarray(m.resize((bw, bh), Image.Resampling.BILINEAR))[: h - y0, : w - x0]
    return out
