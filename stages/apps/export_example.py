"""Score images with an exported drdc run, without drdc: the maps and scores `drdc predict` gives.

    python infer.py IMAGE... [--dir EXPORT_DIR] [--maps OUT_DIR] [--category C] [--base-only] [--draws torch|numpy]

Needs numpy and pillow, and onnxruntime (*.onnx) or torch (*.pt). 8-bit images (PNG, JPEG, ...); drdc itself also
maps 16-bit images to 8 bits first. Prints one CSV line per image: path, score, verdict (the manifest's threshold
for the image's category when the run was calibrated in this mode; else "uncalibrated").

The diffusion branch inpaints randomly masked copies of each image from random noise (drdc.onnx's masks and noise
inputs). `--draws torch` (the default when torch is installed) draws them with drdc's own generators, seeded from
the image file's bytes, and so gives predict's numbers; `--draws numpy` needs no torch and draws another sample of
the same distribution, so its scores differ from predict's by the method's sampling spread.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import warnings
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


def content_id(path: Path) -> int:
    """The image's id, from its file's bytes, as `drdc predict` gives an image outside the run's dataset."""
    return -1 - int(hashlib.sha256(path.read_bytes()).hexdigest()[:15], 16)


def generator_seed(seed: int, image_id: int, stream: int) -> int:
    """The seed of drdc's generator for (seed, image, stream) (stages.method.masks.image_generator)."""
    digest = hashlib.sha256(f"drdc:{int(seed)}:{int(image_id)}:{int(stream)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def draw(d: dict, image_id: int, backend: str) -> tuple[np.ndarray, np.ndarray]:
    """masks (n_c, n_s, s, s), noise (n_c, D, n_s, 3, s, s), float32, for the manifest's draws d: per c, the
    (s / c)^2 cells are split at random into n_s sets (M_i = 0 on set i), then noise_draws N(0, 1) draws."""
    s, n_s, layout = d["size"], d["n_s"], d["layout"]
    masks = np.zeros((len(layout), n_s, s, s), np.float32)
    noise = np.zeros((len(layout), d["noise_draws_max"], n_s, 3, s, s), np.float32)
    for n, e in enumerate(layout):
        cells = s // e["c"]
        seeds = [generator_seed(d["seed"], image_id, e[k]) for k in ("mask_stream", "noise_stream")]
        if backend == "torch":
            import torch

            perm = torch.randperm(cells * cells, generator=torch.Generator().manual_seed(seeds[0])).numpy()
            g = torch.Generator().manual_seed(seeds[1])
            noise[n, : e["noise_draws"]] = np.stack([torch.randn((n_s, 3, s, s), generator=g).numpy()
                                                     for _ in range(e["noise_draws"])])
        else:
            perm = np.random.default_rng(seeds[0]).permutation(cells * cells)
            noise[n, : e["noise_draws"]] = np.random.default_rng(seeds[1]).standard_normal(
                (e["noise_draws"], n_s, 3, s, s), dtype=np.float32)
        owner = np.empty(cells * cells, np.int64)
        owner[perm] = np.arange(cells * cells) % n_s  # the k-th drawn cell goes to set k mod n_s
        owner = owner.reshape(cells, cells).repeat(e["c"], 0).repeat(e["c"], 1)
        masks[n] = owner[None] != np.arange(n_s)[:, None, None]
    return masks, noise


def load(graph: Path):
    """f(*inputs) -> outputs of an exported graph (numpy in, numpy out)."""
    if graph.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda *xs: session.run(None, dict(zip(names, xs)))
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        model = torch.jit.load(str(graph)).eval()

    def run(*xs):
        with torch.no_grad():
            out = model(*map(torch.from_numpy, xs))
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]

    return run


def score_image(run, manifest: dict, mode: str, path: Path, category: str | None = None,
                draws: str | None = "torch") -> tuple[float, np.ndarray]:
    """(image score, H_out (H_base in base mode) (S, S)) of one image file through the graph `run` (`load`)."""
    pre, pool = manifest["preprocess"], manifest["score"]["pool"]
    cats = manifest["categories"]
    cat = np.array([cats.index(category) if category in cats else -1], dtype=np.int64)
    x, valid = preprocess(path, pre["size"], pre["resize"])
    inputs = [x[None], cat]
    d = manifest.get("draws") if mode == "fuse" else None
    if d is not None:
        inputs += [v[None] for v in draw(d, content_id(path), draws or "numpy")]
    outs = run(*inputs)
    h = outs[0][0]  # H_out (H_base in base mode)
    own = mode == "fuse" and manifest["score"].get("map") == "h_img"  # image scores from a fusion of their own
    return image_score(outs[-1][0] if own else h, pool, valid), h


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent, help="the export folder")
    ap.add_argument("--maps", type=Path, help="also write each scored map here, as <n>_<stem>.npy (n: its place)")
    ap.add_argument("--category", help="the images' category (its statistics and threshold); default: unknown")
    ap.add_argument("--base-only", action="store_true", help="score H_base alone, as `drdc predict --base-only`")
    ap.add_argument("--draws", choices=["torch", "numpy"], help="who draws the masks and noise (default: torch "
                    "when it is installed, which gives predict's numbers)")
    a = ap.parse_args(argv)
    manifest = json.loads((a.dir / "manifest.json").read_text())
    graphs = manifest["graphs"]
    mode = "base" if a.base_only or "drdc" not in graphs else "fuse"
    run = load(a.dir / graphs["base" if mode == "base" else "drdc"])
    d = manifest.get("draws") if mode == "fuse" else None
    if d is not None and a.draws is None:
        a.draws = "torch" if importlib.util.find_spec("torch") else "numpy"
    th = manifest["thresholds"] if manifest["mode"] == mode else None
    print("path,score,verdict")
    for n, path in enumerate(a.images):
        score, h = score_image(run, manifest, mode, path, a.category, a.draws)
        limit = None if th is None else th["image"].get(a.category, th["image_global"])
        verdict = "uncalibrated" if limit is None else ("anomalous" if score > limit else "normal")
        print(f"{path},{score:.6g},{verdict}")
        if a.maps:
            a.maps.mkdir(parents=True, exist_ok=True)
            np.save(a.maps / f"{n}_{path.stem}.npy", h)
    return 0


if __name__ == "__main__":
    sys.exit(main())
