"""Score images with an exported drdc run, without drdc: base-only maps and scores, as `drdc predict --base-only`.

    python infer.py IMAGE... [--dir EXPORT_DIR] [--maps OUT_DIR]

Needs numpy and pillow, and onnxruntime (base.onnx) or torch (base.pt). 8-bit images (PNG, JPEG, ...); drdc
itself also maps 16-bit images to 8 bits first. Prints one CSV line per image: path, score, verdict (the
manifest's per-category threshold when the run was calibrated in base mode; else "uncalibrated").
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def layout(w: int, h: int, size: int, mode: str) -> tuple[int, int, int, int]:
    """(scaled w, scaled h, x offset, y offset) of the image in the size x size square (drdc's stages.data.geometry)."""
    if mode == "squash":
        return size, size, 0, 0
    scale = size / (max(w, h) if mode == "pad" else min(w, h))
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    sw, sh = (min(sw, size), min(sh, size)) if mode == "pad" else (max(sw, size), max(sh, size))
    return sw, sh, (size - sw) // 2, (size - sh) // 2


def preprocess(path: Path, size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(image (3, S, S) float32 in [0, 1], valid (S, S) bool: the pixels that show the image)."""
    img = Image.open(path).convert("RGB")
    sw, sh, ox, oy = layout(*img.size, size, mode)
    a = np.asarray(img.resize((sw, sh), Image.Resampling.BILINEAR))
    valid = np.ones((size, size), bool)
    if mode == "pad":
        a = np.pad(a, [(oy, size - sh - oy), (ox, size - sw - ox), (0, 0)], mode="edge")
        valid[:] = False
        valid[oy:oy + sh, ox:ox + sw] = True
    elif mode == "center-crop":
        a = a[-oy:-oy + size, -ox:-ox + size]
    return np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32) / 255.0, valid


def image_score(h: np.ndarray, pool: int, valid: np.ndarray) -> float:
    """Max of the pool x pool average-pooled map (stride 1); the fill of a padded image never counts."""
    h = h.astype(np.float64)
    if not valid.all():
        h = np.where(valid, h, h[valid].min())
    k = min(pool, *h.shape)

    def box_mean(x: np.ndarray) -> np.ndarray:
        c = np.pad(x, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)

    pooled, cover = box_mean(h), box_mean(valid.astype(np.float64))
    inside = pooled[cover >= 0.5]
    return float(inside.max() if inside.size else pooled.max())


def load(export: Path, manifest: dict):
    """f(images (B, 3, S, S), category (B,) int64) -> H_base (B, S, S); the category is used only by a run whose
    base map is the residual's Mahalanobis norm (index into manifest["residual_categories"], -1: nearest)."""
    graph = export / manifest["graphs"]["base"]
    takes_category = "category" in manifest.get("base_inputs", ["image"])
    if graph.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        return lambda x, c: session.run(None, {"image": x, **({"category": c} if takes_category else {})})[0]
    import torch

    model = torch.jit.load(str(graph)).eval()
    return lambda x, c: model(torch.from_numpy(x), *((torch.from_numpy(c),) if takes_category else ())).detach().numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent, help="the export folder")
    ap.add_argument("--maps", type=Path, help="also write each H_base map here, as <n>_<stem>.npy (n: its place)")
    ap.add_argument("--category", help="the images' category, for its threshold")
    a = ap.parse_args(argv)
    manifest = json.loads((a.dir / "manifest.json").read_text())
    pre, pool = manifest["preprocess"], manifest["score"]["pool"]
    run = load(a.dir, manifest)
    th = manifest["thresholds"] if manifest["mode"] == "base" else None
    print("path,score,verdict")
    cats = manifest.get("residual_categories") or []
    cat = np.array([cats.index(a.category) if a.category in cats else -1], dtype=np.int64)
    for n, path in enumerate(a.images):
        x, valid = preprocess(path, pre["size"], pre["resize"])
        h = run(x[None], cat)[0]
        score = image_score(h, pool, valid)
        limit = None if th is None else th["image"].get(a.category, th["image_global"])
        verdict = "uncalibrated" if limit is None else ("anomalous" if score > limit else "normal")
        print(f"{path},{score:.6g},{verdict}")
        if a.maps:
            a.maps.mkdir(parents=True, exist_ok=True)
            np.save(a.maps / f"{n}_{path.stem}.npy", h)
    return 0


if __name__ == "__main__":
    sys.exit(main())
