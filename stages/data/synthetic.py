"""A deterministic, built-in multi-category anomaly-detection dataset in MVTec-AD layout.

Why it exists: the test suite and ``drdc demo`` need data that looks like an industrial inspection set
(textures, a posed object, a grey category; thin, blob and missing-part defects with exact masks)
without shipping any photos. Everything is drawn with numpy + Pillow (+ scipy.ndimage) from seeds
derived from ``(seed, category, split folder, index)``, so growing one split never changes another.

Every image is rendered as a clean *scene* first and a defect is then painted onto it; the mask is
exactly the set of pixels the defect changed by at least ``MIN_VISIBLE`` grey levels (everything
else is copied from the clean image byte for byte). ``render_sample`` exposes that pair for tests.
"""
from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from tqdm import tqdm

from stages.data.choices import SYNTHETIC_CATEGORIES, SYNTHETIC_DEFECTS
from stages.data.choices import SyntheticSpec  # noqa: F401 (its home is torch- and numpy-free)
from stages.errors import ConfigError

CATEGORIES, DEFECTS = SYNTHETIC_CATEGORIES, SYNTHETIC_DEFECTS
GRAY_CATEGORIES: frozenset[str] = frozenset({"grain"})
MARKER = ".drdc-synthetic.json"
FORMAT = 1  # bump when the drawing code changes, so an old dataset dir is not silently mixed with new images
MIN_VISIBLE = 8  # grey levels: a defect pixel must change by at least this much (in some channel) to be masked
MIN_PIXELS = 3  # a defect image always gets at least this many mask pixels, even at 32 px


@dataclass
class Scene:
    """A clean render: the image plus what defect painters need to know about it."""

    image: np.ndarray  # float32 (C, S, S), grey levels 0..255, C = 3 or 1 (channels first: fast broadcasting)
    surface: np.ndarray  # bool (S, S): where a defect may sit (the whole texture, or the part's face)
    background: np.ndarray | None = None  # objects: the same picture without the part
    center: tuple[float, float] = (0.0, 0.0)  # objects: (y, x) of the part
    radius: float = 0.0  # objects: outer radius in px
    clearance: np.ndarray | None = None  # lazily: distance of each pixel to the surface's edge / image border


# ----------------------------------------------------------------------------------------- helpers
@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x); pixel i has centre i."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


@lru_cache(maxsize=32)
def _gaussian_transfer(size: int, sigma: tuple[float, float]) -> np.ndarray:
    """Fourier transfer function of a periodic Gaussian blur, for rfft2 spectra."""
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]
    return np.exp(-2 * np.pi**2 * ((sigma[0] * fy) ** 2 + (sigma[1] * fx) ** 2)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float | tuple[float, float]) -> np.ndarray:
    """Unit-variance, periodic (hence stationary) Gaussian-blurred white noise, drawn directly as a spectrum."""
    sig = (float(sigma), float(sigma)) if np.isscalar(sigma) else (float(sigma[0]), float(sigma[1]))
    shape = (size, size // 2 + 1)
    spectrum = rng.standard_normal(shape, np.float32) + 1j * rng.standard_normal(shape, np.float32)
    n = np.fft.irfft2(spectrum * _gaussian_transfer(size, sig), s=(size, size))
    return n / (n.std() + 1e-12)


def _to_u8(image: np.ndarray) -> np.ndarray:
    """Channels-first float -> HxWxC uint8."""
    return np.ascontiguousarray(np.clip(np.rint(image), 0, 255).astype(np.uint8).transpose(1, 2, 0))


def _blob_field(size: int, center: tuple[float, float], radius: float, rng: np.random.Generator) -> np.ndarray:
    """Irregular blob: positive inside, roughly the distance to the edge in px (a wobbly circle)."""
    yy, xx = _grid(size)
    dy, dx = yy - center[0], xx - center[1]
    theta = np.arctan2(dy, dx)
    wobble = sum(a * np.cos(k * theta + p) for k, a, p in
                 zip((2, 3, 5), rng.uniform(-0.15, 0.15, 3), rng.uniform(0, 2 * np.pi, 3)))
    return radius * (1.0 + wobble) - np.sqrt(dy * dy + dx * dx)


def _pick_point(scene: Scene, rng: np.random.Generator, clearance: float) -> tuple[float, float]:
    """A random sub-pixel point on the surface, `clearance` px from its edges and the image border if possible
    (so a defect is not mostly cut away); falls back to the most interior points."""
    if scene.clearance is None:
        scene.clearance = ndimage.distance_transform_edt(np.pad(scene.surface, 1))[1:-1, 1:-1]
    dist = scene.clearance
    ok = dist > min(clearance, 0.5 * dist.max())
    ys, xs = np.nonzero(ok)
    k = int(rng.integers(len(ys)))
    return float(ys[k] + rng.uniform(-0.5, 0.5)), float(xs[k] + rng.uniform(-0.5, 0.5))


# ---------------------------------------------------------------------------------- clean renders
def _weave(size: int, rng: np.random.Generator) -> Scene:
    """Denim-like 2/1 twill: blue warp over white weft, per-thread tint, fibre noise, random phase."""
    yy, xx = _grid(size)
    period = max(4.0, 9.0 * size / 224)
    a = math.radians(rng.uniform(-2.0, 2.0))
    x = (xx * math.cos(a) + yy * math.sin(a)) / period + rng.uniform(0, 3)
    y = (yy * math.cos(a) - xx * math.sin(a)) / period + rng.uniform(0, 3)
    fi, fj = np.floor(x), np.floor(y)
    i, j = fi.astype(np.int32), fj.astype(np.int32)
    warp_on_top = ((i - j) % 3) != 0  # 2/1 twill: diagonal ribs
    profile = np.sqrt(np.sin(np.pi * np.where(warp_on_top, x - fi, y - fj)))  # rounded thread cross-section
    tint = 0.06 * rng.standard_normal((2, 256), np.float32)
    warp = np.array([52.0, 74.0, 122.0], np.float32) * rng.uniform(0.96, 1.04)
    weft = np.array([196.0, 196.0, 204.0], np.float32) * rng.uniform(0.96, 1.04)
    col = np.where(warp_on_top, warp[:, None, None] * (1 + tint[0][i % 256]),
                   weft[:, None, None] * (1 + tint[1][j % 256]))
    fibre = 7.0 * _smooth_noise(rng, size, 0.6)
    return Scene(col * (0.35 + 0.65 * profile) + fibre, np.ones((size, size), bool))


def _grain(size: int, rng: np.random.Generator) -> Scene:
    """Grey wood/tile grain: warped dark bands plus streaks along x; one channel (saved as 'L')."""
    yy, xx = _grid(size)
    period = size / rng.uniform(9.0, 12.0)
    warp = _smooth_noise(rng, size, size / 12) * period * 0.6
    phase = (yy + warp + xx * rng.uniform(-0.08, 0.08)) / period + rng.uniform(0, 1)
    bands = 0.5 + 0.5 * np.sin(2 * np.pi * phase)
    bands = bands * bands * bands  # sharpen the dark late-wood bands
    streak = _smooth_noise(rng, size, (0.6, 0.5 + 4.0 * size / 224))
    speckle = rng.standard_normal((size, size), np.float32)
    image = rng.uniform(130.0, 142.0) - 42.0 * bands + 7.0 * streak + 1.5 * speckle
    return Scene(image[None], np.ones((size, size), bool))


def _disc(size: int, rng: np.random.Generator) -> Scene:
    """Turned-metal flange (bore, 4 bolt holes, key notch) with small pose/brightness jitter."""
    yy, xx = _grid(size)
    cy, cx = ((size - 1) / 2 + rng.uniform(-0.01, 0.01, 2) * size).tolist()
    rot = math.radians(rng.uniform(-8.0, 8.0))
    outer, bore = 0.36 * size, 0.13 * size
    dy, dx = yy - cy, xx - cx
    d = np.sqrt(dy * dy + dx * dx)
    sd = np.maximum(d - outer, bore - d)  # signed distance to the part's edge, negative inside
    for k in range(4):
        ang = rot + np.pi / 4 + k * np.pi / 2
        by, bx = cy + 0.245 * size * math.sin(ang), cx + 0.245 * size * math.cos(ang)
        sd = np.maximum(sd, 0.042 * size - np.sqrt((yy - by) ** 2 + (xx - bx) ** 2))
    u, t = dx * math.cos(rot) + dy * math.sin(rot), dy * math.cos(rot) - dx * math.sin(rot)
    sd = np.maximum(sd, -np.maximum(outer - 0.06 * size - u, np.abs(t) - 0.035 * size))  # key notch
    alpha = np.clip(0.5 - sd, 0.0, 1.0)  # anti-aliased coverage of the part
    lathe = 5.0 * np.sin(2 * np.pi * d / max(2.5, 0.02 * size) + rng.uniform(0, 2 * np.pi))
    rim = 30.0 * np.exp(-np.abs(sd) / (0.5 + 0.012 * size))
    cos2, sin2 = (dx * dx - dy * dy) / (d * d + 1e-6), 2 * dx * dy / (d * d + 1e-6)  # of the polar angle x2
    highlight = cos2 * math.cos(1.2) + sin2 * math.sin(1.2)  # anisotropic sheen of turned metal
    shade = (140.0 + 30.0 * highlight + lathe + rim) * rng.uniform(0.94, 1.06)
    part = shade * np.array([1.0, 1.0, 1.06], np.float32)[:, None, None]
    noise = rng.standard_normal((size, size), np.float32)
    background = np.array([46.0, 50.0, 56.0], np.float32)[:, None, None] + 1.2 * noise  # plain, sensor noise
    image = background * (1 - alpha) + part * alpha
    surface = sd < -max(1.0, 0.012 * size)
    return Scene(image, surface, background, (float(cy), float(cx)), outer)


RENDERERS: dict[str, Callable[[int, np.random.Generator], Scene]] = {
    "weave": _weave, "disc": _disc, "grain": _grain}


# ---------------------------------------------------------------------------------- defect paints
def _coverage_of_polyline(size: int, ys: np.ndarray, xs: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased coverage (0..1) of a thick polyline, drawn 4x supersampled with Pillow."""
    ss = 4
    canvas = Image.new("L", (size * ss, size * ss), 0)
    points = [((x + 0.5) * ss - 0.5, (y + 0.5) * ss - 0.5) for y, x in zip(ys, xs)]
    ImageDraw.Draw(canvas).line(points, fill=255, width=max(1, round(width * ss)), joint="curve")
    fine = np.asarray(canvas, dtype=np.float32) / 255.0
    return fine.reshape(size, ss, size, ss).mean(axis=(1, 3))


def _scratch(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A thin, slightly curved line (1-3 px at 224, scaled), bright or dark, clipped to the surface."""
    size = scene.surface.shape[0]
    cy, cx = _pick_point(scene, rng, 0.05 * size)
    length, ang, bend = rng.uniform(0.15, 0.4) * size, rng.uniform(0, np.pi), rng.uniform(-0.08, 0.08)
    t = np.linspace(-0.5, 0.5, 17)
    sag = bend * length * (1 - 4 * t**2)
    ys = cy + math.sin(ang) * t * length + math.cos(ang) * sag
    xs = cx + math.cos(ang) * t * length - math.sin(ang) * sag
    cover = _coverage_of_polyline(size, ys, xs, max(1.0, rng.uniform(1.0, 3.0) * size / 224)) * scene.surface
    local = float(scene.image[:, int(np.clip(cy, 0, size - 1)), int(np.clip(cx, 0, size - 1))].mean())
    sign = 1.0 if rng.random() < (0.75 if local < 128 else 0.25) else -1.0
    return scene.image + sign * rng.uniform(55.0, 85.0) * cover


def _hole(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A small irregular pit: mostly dark, sometimes bright, with a slightly soft rim."""
    size = scene.surface.shape[0]
    radius = max(1.6, rng.uniform(4.0, 10.0) * size / 224)
    field = _blob_field(size, _pick_point(scene, rng, radius + 1.0), radius, rng)
    depth = np.where((field > 0) & scene.surface, np.clip(field / max(1.0, 0.4 * radius), 0.6, 1.0), 0.0)
    target = rng.uniform(10.0, 30.0) if rng.random() < 0.75 else rng.uniform(225.0, 245.0)
    return scene.image + (target - scene.image) * depth


_STAIN_TINTS = np.array([[0.6, -0.2, -1.0],  # rust / brown
                         [-1.0, -0.9, -0.8],  # oil: darker, slightly warm
                         [-1.0, 0.2, -0.8],  # green dye
                         [0.6, -1.0, -0.3]], np.float32)  # red/magenta dye


def _stain(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A soft-edged blob that shifts colour by 25-45 grey levels: a rust/oil/dye tint, or darker/lighter if grey."""
    size, channels = scene.surface.shape[0], scene.image.shape[0]
    radius = max(2.5, rng.uniform(10.0, 26.0) * size / 224)
    field = _blob_field(size, _pick_point(scene, rng, 0.7 * radius), radius, rng)
    a = np.clip(field / (0.4 * radius), 0.0, 1.0)
    a = a * a * (3 - 2 * a) * scene.surface  # smoothstep: soft edge
    if channels == 3:
        tint = _STAIN_TINTS[int(rng.integers(len(_STAIN_TINTS)))]
    else:
        tint = np.array([-1.0 if rng.random() < 0.75 else 1.0])
    return scene.image + rng.uniform(25.0, 45.0) * tint[:, None, None] * a


def _missing(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A chunk bitten out of the part's rim, replaced by the background behind it."""
    if scene.background is None:
        raise ValueError("'missing' needs an object scene (with a background)")
    size = scene.surface.shape[0]
    ang, rr = rng.uniform(0, 2 * np.pi), scene.radius * rng.uniform(0.95, 1.05)
    center = (scene.center[0] + rr * math.sin(ang), scene.center[1] + rr * math.cos(ang))
    cut = _blob_field(size, center, rng.uniform(0.09, 0.15) * size, rng) > 0
    return np.where(cut, scene.background, scene.image)


PAINTERS: dict[str, Callable[[Scene, np.random.Generator], np.ndarray]] = {
    "scratch": _scratch, "hole": _hole, "stain": _stain, "missing": _missing}


def apply_defect(scene: Scene, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint `kind` onto the scene; returns (uint8 image, bool mask) with mask == changed pixels exactly.

    Pixels the painter moved by less than MIN_VISIBLE are reset to the clean value, so the mask never
    marks invisible changes. A draw that leaves fewer than MIN_PIXELS visible pixels is redrawn.
    """
    clean = _to_u8(scene.image)
    for _ in range(100):
        painted = _to_u8(PAINTERS[kind](scene, rng))
        mask = np.abs(painted.astype(np.int16) - clean).max(axis=2) >= MIN_VISIBLE
        if mask.sum() >= MIN_PIXELS:
            return np.where(mask[..., None], painted, clean), mask
    raise RuntimeError(f"could not place a visible {kind!r} defect")  # not reached for valid sizes


# ------------------------------------------------------------------------------------ the dataset
def _rngs(seed: int, category: str, split: str, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent (clean, defect) generators for one image; keyed by names, not by position."""
    entropy = [seed, zlib.crc32(category.encode()), zlib.crc32(split.encode()), index]
    clean, defect = np.random.SeedSequence(entropy).spawn(2)
    return np.random.default_rng(clean), np.random.default_rng(defect)


def render_sample(category: str, size: int, seed: int, split: str, index: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One image as (clean uint8 HxWxC, image uint8 HxWxC, bool mask or None); C is 1 for grey categories.

    `split` is the folder: 'train/good', 'test/good' or 'test/<kind>'. make_dataset writes exactly these
    arrays, so tests can compare a defect image with its clean twin.
    """
    clean_rng, defect_rng = _rngs(seed, category, split, index)
    scene = RENDERERS[category](size, clean_rng)
    clean = _to_u8(scene.image)
    kind = split.split("/", 1)[1]
    if kind == "good":
        return clean, clean, None
    image, mask = apply_defect(scene, kind, defect_rng)
    return clean, image, mask


def _jobs(spec: SyntheticSpec) -> list[tuple[str, str, int]]:
    """(category, split folder, index) for every image; defects go round-robin over the category's kinds."""
    jobs: list[tuple[str, str, int]] = []
    for cat in spec.categories:
        jobs += [(cat, "train/good", i) for i in range(spec.n_train)]
        jobs += [(cat, "test/good", i) for i in range(spec.n_test_good)]
        kinds = DEFECTS[cat]
        jobs += [(cat, f"test/{kinds[i % len(kinds)]}", i // len(kinds)) for i in range(spec.n_test_defect)]
    return jobs


def _spec_json(spec: SyntheticSpec) -> dict:
    d = asdict(spec)
    d["categories"] = list(d["categories"])
    return {k: (int(v) if isinstance(v, np.integer) else v) for k, v in d.items()}


def _write_marker(out: Path, spec: SyntheticSpec, complete: bool) -> None:
    doc = {"generator": "drdc.stages.data.synthetic", "format": FORMAT, "spec": _spec_json(spec), "complete": complete}
    (out / MARKER).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _read_marker(out: Path) -> dict | None:
    try:
        doc = json.loads((Path(out) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_complete(out: Path, spec: SyntheticSpec) -> bool:
    """True when `out` holds a finished dataset written by this generator version with exactly `spec`
    (callers such as ``drdc demo`` then skip regenerating it)."""
    doc = _read_marker(out)
    return bool(doc and doc.get("format") == FORMAT and doc.get("spec") == _spec_json(spec)
                and doc.get("complete") is True)


def _prepare_out(out: Path, spec: SyntheticSpec) -> None:
    """Refuse to mix with foreign files or with a synthetic dataset of another spec; never delete anything."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"synthetic dataset: out {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        old = _read_marker(out)
        if old is None:
            raise ConfigError(f"synthetic dataset: out {str(out)!r} is not empty and has no {MARKER}; "
                              "choose an empty or new directory")
        if old.get("format") != FORMAT or old.get("spec") != _spec_json(spec):
            raise ConfigError(f"synthetic dataset: out {str(out)!r} holds a synthetic dataset with another spec "
                              f"({old.get('spec')}); choose another directory or delete it")
    out.mkdir(parents=True, exist_ok=True)


def make_dataset(out: Path, spec: SyntheticSpec = SyntheticSpec(), progress: bool = False) -> Path:
    """Write the dataset under `out` (MVTec layout, see module doc) and return `out`.

    Raises ConfigError for an unusable `out` (a bad spec value is refused when the spec is made). A rerun with the same spec into the same
    directory is allowed and rewrites identical bytes; the marker's "complete" flag is true only at the end.
    """
    out = Path(out)
    _prepare_out(out, spec)
    _write_marker(out, spec, complete=False)
    for cat, split, index in tqdm(_jobs(spec), desc="synthetic data", unit="img", disable=not progress):
        _, image, mask = render_sample(cat, spec.size, spec.seed, split, index)
        # names depend on the index only (never on counts); compress_level=1: PNG encoding dominates runtime
        folder = out / cat / split
        folder.mkdir(parents=True, exist_ok=True)
        pixels = image[..., 0] if cat in GRAY_CATEGORIES else image  # 2-D uint8 -> 'L', HxWx3 -> 'RGB'
        Image.fromarray(pixels).save(folder / f"{index:03d}.png", compress_level=1)
        if mask is not None:
            mask_dir = out / cat / "ground_truth" / split.split("/", 1)[1]
            mask_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / f"{index:03d}_mask.png", compress_level=1)
    _write_marker(out, spec, complete=True)
    return out
