"""Score images with an exported drdc run, without drdc: the maps and scores `drdc predict` gives.

    python infer.py IMAGE_OR_FOLDER... [--dir EXPORT_DIR] [--maps OUT_DIR] [--category C] [--base-only]
                    [--draws torch|numpy] [--overwrite]

Needs numpy and pillow, and onnxruntime (*.onnx) or torch (*.pt). Reads images exactly as drdc does: any PIL mode
(grayscale, palette, RGBA, CMYK, 16-bit and float grayscale scaled to 8 bits), the pixels as stored (an EXIF
orientation tag is not applied, by drdc nor here), resized as the run's --resize says; folders are searched
recursively (hidden files, non-images and ground_truth/ folders skipped). Prints one CSV line per image: path, score,
verdict (the manifest's threshold for the image's category when the run was calibrated in this mode; else
"uncalibrated"). A file that cannot be scored (missing, empty, not an image, truncated, too large) is refused
in one line on stderr and the others are scored; the exit status is then 1.

The diffusion branch inpaints randomly masked copies of each image from random noise (drdc.onnx's masks and noise
inputs). `--draws torch` (the default when torch is installed) draws them with drdc's own generators, seeded from
the image file's bytes, and so gives predict's numbers; `--draws numpy` needs no torch and draws another sample of
the same distribution, so its scores differ from predict's by the method's sampling spread.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# drdc's stages.data.images: the files it reads and the largest image it decodes
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
MAX_PIXELS = 100_000_000
SKIP_DIRS = {"ground_truth"}


class Refused(Exception):
    """A file that cannot be scored; the message names it (as drdc's DataError does)."""


def collect(inputs: list[Path], refuse) -> list[Path]:
    """Files given, plus the image files under folders given (recursive, sorted; hidden files, non-images and
    ground_truth/ folders skipped), as `drdc predict` collects them; refuse(message) for an input that gives none."""
    found: list[Path] = []
    for p in inputs:
        p = Path(p).expanduser()
        if not p.exists():
            refuse(f"{p}: no such file or folder")
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                refuse(f"{p}: not an image file (expected one of {', '.join(sorted(IMAGE_SUFFIXES))})")
            else:
                found.append(p)
        else:
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not any(q.startswith(".") or q in SKIP_DIRS for q in f.relative_to(p).parts))
            if not files:
                refuse(f"{p}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found.extend(files)
    return list(dict.fromkeys(found))


def open_image(path: Path) -> Image.Image:
    """Open and fully decode one image; every failure is a Refused naming the file (stages.data.images._open)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise Refused(f"{path}: image is {w}x{h}, larger than the {MAX_PIXELS:,}-pixel limit")
            img.load()  # decodes now: a truncated file fails here
    except Refused:
        raise
    except FileNotFoundError:
        raise Refused(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise Refused(f"{path}: not an image (PIL cannot identify it)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Refused(f"{path}: image is larger than the {MAX_PIXELS:,}-pixel limit") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise Refused(f"{path}: cannot decode image ({e})") from None
    if w == 0 or h == 0:
        raise Refused(f"{path}: image has zero size")
    return img


def to_8bit(img: Image.Image) -> Image.Image:
    """High-bit-depth grayscale (I;16, I, F) scaled to 8 bits, as drdc does (PIL's convert('L') would clip)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(img, dtype=np.float64) / 65535.0
    elif img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        a = a / (65535.0 if a.max(initial=0) > 255 else 255.0)
    else:
        return img
    return Image.fromarray(np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8), mode="L")


def layout(w: int, h: int, size: int, mode: str) -> tuple[int, int, int, int]:
    """(scaled w, scaled h, x offset, y offset) of the image in the size x size square (drdc's stages.data.geometry)."""
    if mode == "squash":
        return size, size, 0, 0
    scale = size / (max(w, h) if mode == "pad" else min(w, h))
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    sw, sh = (min(sw, size), min(sh, size)) if mode == "pad" else (max(sw, size), max(sh, size))
    return sw, sh, (size - sw) // 2, (size - sh) // 2


def preprocess(path: Path, size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(image (3, S, S) float32 in [0, 1], valid (S, S) bool: the pixels that show the image), decoded and resized
    as drdc's stages.data.images.load_rgb."""
    img = to_8bit(open_image(path))
    if img.mode != "RGB":
        img = img.convert("RGB")
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
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise Refused(f"{path}: cannot read ({e.strerror or e})") from None
    return -1 - int(digest[:15], 16)


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


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER")
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent, help="the export folder")
    ap.add_argument("--maps", type=Path, help="also write each scored map here, as <n>_<stem>.npy (n: its place)")
    ap.add_argument("--overwrite", action="store_true", help="replace map files that exist (else refused)")
    ap.add_argument("--category", help="the images' category (its statistics and threshold); default: unknown")
    ap.add_argument("--base-only", action="store_true", help="score H_base alone, as `drdc predict --base-only`")
    ap.add_argument("--draws", choices=["torch", "numpy"], help="who draws the masks and noise (default: torch "
                    "when it is installed, which gives predict's numbers)")
    a = ap.parse_args(argv)
    try:
        manifest = json.loads((a.dir / "manifest.json").read_text())
        graphs, cats = manifest["graphs"], manifest["categories"]
        manifest["preprocess"]["size"], manifest["score"]["pool"]  # noqa: B018 - present, or not a drdc manifest
    except (OSError, ValueError, KeyError, TypeError) as e:
        return fail(f"{a.dir / 'manifest.json'}: not the manifest of a drdc export ({type(e).__name__}: {e})")
    if a.category is not None and a.category not in cats:
        return fail(f"--category: {a.category!r} is not a category of this export ({', '.join(cats)})")
    mode = "base" if a.base_only or "drdc" not in graphs else "fuse"
    try:
        run = load(a.dir / graphs["base" if mode == "base" else "drdc"])
    except ImportError as e:
        return fail(f"{e.name or e}: not installed (pip install onnxruntime, or torch for *.pt graphs)")
    except Exception as e:  # noqa: BLE001 - a missing or damaged graph file
        return fail(f"{a.dir / graphs['base' if mode == 'base' else 'drdc']}: cannot load the graph "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})")
    d = manifest.get("draws") if mode == "fuse" else None
    if d is not None and a.draws is None:
        a.draws = "torch" if importlib.util.find_spec("torch") else "numpy"
    th = manifest["thresholds"] if manifest["mode"] == mode else None
    refused: list[str] = []

    def refuse(message: str) -> None:
        refused.append(message)
        print(f"error: {message}; skipped", file=sys.stderr, flush=True)

    paths = collect(a.images, refuse)
    if a.maps:
        if a.maps.exists() and not a.maps.is_dir():
            return fail(f"--maps: {a.maps} exists and is not a folder")
        there = [a.maps / f"{n}_{p.stem}.npy" for n, p in enumerate(paths)
                 if (a.maps / f"{n}_{p.stem}.npy").exists()] if not a.overwrite else []
        if there:
            return fail(f"--maps: {there[0]} exists, and this replaces no file it did not write; pass --overwrite "
                        "to replace it, or give another folder")
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["path", "score", "verdict"])
    for n, path in enumerate(paths):
        try:
            score, h = score_image(run, manifest, mode, path, a.category, a.draws)
        except Refused as e:
            refuse(str(e))
            continue
        limit = None if th is None else th["image"].get(a.category, th["image_global"])
        verdict = "uncalibrated" if limit is None else ("anomalous" if score > limit else "normal")
        out.writerow([str(path), f"{score:.6g}", verdict])
        sys.stdout.flush()
        if a.maps:
            a.maps.mkdir(parents=True, exist_ok=True)
            np.save(a.maps / f"{n}_{path.stem}.npy", h)
    if refused:
        print(f"error: {len(refused)} of the inputs could not be scored (named above); the others were",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
