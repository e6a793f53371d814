"""Synthetic defects with exact masks, pasted into normal images (a label-free validation set).

A synthetic defect is a proxy for real ones: held-out normal train images get copies with known, painted
defects, and settings (thresholds, fusion weights) are tuned on them without ever looking at the real test
defects. The recipes follow DRAEM / anomalib (``data/utils/synthetic.py``): thresholded Perlin noise filled
with a foreign texture, plus CutPaste and simple line / disc primitives.

Kinds (``KINDS``):
  * ``scratch``  -- a thin bright or dark anti-aliased curve (cubic Bezier), 1-3 px wide at 224 px;
  * ``spot``     -- 1-3 small round dark or bright discs (holes, blowholes), radius 2-7 px at 224 px;
  * ``perlin``   -- a thresholded 2D Perlin-noise region (0.5%-8% of the image) filled with a foreign
    texture (smooth noise or stripes) or shifted in brightness / colour;
  * ``cutpaste`` -- a rectangle cut from another normal image of the category (``donor``) and pasted, maybe
    flipped / rotated, at a random place.
Harder kinds (``HARD_KINDS``), each with a contrast of k standard deviations of the surface's fine texture around it
(k drawn per defect):
  * ``crack``   -- a jagged random-walk line 1-2 px wide at 224 px, maybe with a branch, darker or brighter by
    k in [1, 4] standard deviations of the pixels around it;
  * ``stain``   -- a large soft-edged region (5%-25% of the image, low-frequency Perlin) shifted in brightness by
    k in [1, 4]: an uneven surface; the mask is where the blend weight reaches one half;
  * ``texture`` -- a Perlin region (2%-10%) whose texture is changed but not its mean: smoothed away (a box blur)
    or replaced by the image's own texture from elsewhere at 1.5-2.5x zoom, mean matched;
  * ``dent``    -- 1-2 soft blobs (radius 3-10 px at 224), darker or brighter by k in [1, 3].

Pure numpy: no torch, no IO. Deterministic given the ``np.random.Generator``; the input is never modified.
For the classic kinds, pixels outside a 1-pixel dilation of the returned mask are bit-identical to the input
(the soft edges of ``stain`` and ``dent`` reach further) (only anti-aliased
edges of ``scratch`` / ``spot`` touch that 1-pixel ring), and a grayscale input (R = G = B) stays grayscale.
"""
from __future__ import annotations

import numpy as np

from stages.data.choices import ALL_KINDS, HARD_KINDS, KINDS  # noqa: F401 (the kinds: plain Python, re-exported)

REF = 224.0  # the image size the pixel ranges below are stated for; they scale with S / REF


def _dilate(mask: np.ndarray) -> np.ndarray:
    """(S, S) bool -> (S, S) bool, 3x3 (8-neighbour) binary dilation."""
    p = np.pad(mask, 1)
    s = mask.shape
    out = np.zeros(s, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            out |= p[dy:dy + s[0], dx:dx + s[1]]
    return out


def _is_gray(image: np.ndarray) -> bool:
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _signed(rng: np.random.Generator, amount: float, level: float) -> float:
    """A random-sign shift of ``amount``, flipped when the region's mean ``level`` leaves too little headroom
    that way (a bright scratch on white would clip to nothing and not be a visible defect)."""
    sign = 1.0 if rng.random() < 0.5 else -1.0
    room, other = (255 - level, level) if sign > 0 else (level, 255 - level)
    if room < amount and other > room:
        sign = -sign
    return sign * amount


def _perlin(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W) float Perlin noise in about [-0.7, 0.7] with res = (cells along y, cells along x); any H, W."""
    angles = rng.uniform(0, 2 * np.pi, (res[0] + 1, res[1] + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # (ry+1, rx+1, 2) unit gradients at lattice points
    y = np.arange(shape[0]) * res[0] / shape[0]
    x = np.arange(shape[1]) * res[1] / shape[1]
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - yi)[:, None], (x - xi)[None, :]  # position inside the cell, (H, 1) and (1, W)

    def corner(dy: int, dx: int) -> np.ndarray:  # dot(gradient at corner, offset from corner)
        g = grad[(yi + dy)[:, None], (xi + dx)[None, :]]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    fade = lambda t: 6 * t**5 - 15 * t**4 + 10 * t**3  # noqa: E731 -- C2-smooth interpolation (Perlin 2002)
    uy, ux = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return top * (1 - uy) + bottom * uy


def _polyline_distance(pts: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Distance from pixel centres (ys (h, 1), xs (1, w)) to the polyline pts (n, 2) as (y, x) -> (h, w)."""
    best = np.full(np.broadcast_shapes(ys.shape, xs.shape), np.inf)
    for a, b in zip(pts[:-1], pts[1:]):  # running min keeps memory at one (h, w) per segment at any S
        d = b - a
        t = np.clip(((ys - a[0]) * d[0] + (xs - a[1]) * d[1]) / max(float(d @ d), 1e-12), 0, 1)
        best = np.minimum(best, np.hypot(ys - a[0] - t * d[0], xs - a[1] - t * d[1]))
    return best


def _coverage(dist: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased coverage of a shape of half-width ``radius`` -> (coverage (h, w) float, mask (h, w) bool).

    mask = coverage >= 0.5 (centre within ``radius``); coverage is cut to the mask's 1-pixel dilation so
    nothing further away changes."""
    mask = dist <= radius
    cov = np.clip(radius + 0.5 - dist, 0, 1) * _dilate(mask)
    return cov, mask


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = img.shape[0]
    scale = s / REF
    half = max(1.0, rng.uniform(1, 3) * scale) / 2
    length = rng.uniform(0.15, 0.45) * s
    # Cubic Bezier on a unit chord; control points at 1/3, 2/3 along it keep it monotone (no loop or cusp).
    ctrl = np.array([[0, 0], [rng.uniform(-0.3, 0.3), 1 / 3], [rng.uniform(-0.3, 0.3), 2 / 3], [0, 1]])
    t = np.linspace(0, 1, max(16, int(length)))[:, None]
    curve = ((1 - t) ** 3 * ctrl[0] + 3 * (1 - t) ** 2 * t * ctrl[1] + 3 * (1 - t) * t**2 * ctrl[2] + t**3 * ctrl[3])
    curve *= length / np.linalg.norm(np.diff(curve, axis=0), axis=1).sum()  # arc length = length
    th = rng.uniform(0, 2 * np.pi)
    curve = curve @ np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    margin = half + 2  # keep the whole anti-aliased band inside the image
    lo, hi = curve.min(0), curve.max(0)
    curve += np.array([rng.uniform(margin - lo[i], s - 1 - margin - hi[i]) for i in range(2)])
    y0, x0 = np.floor(curve.min(0) - margin).astype(int)
    y1, x1 = np.ceil(curve.max(0) + margin).astype(int) + 1
    dist = _polyline_distance(curve, np.arange(y0, y1)[:, None], np.arange(x0, x1)[None, :])
    cov, box = _coverage(dist, half)
    mask = np.zeros((s, s), dtype=bool)
    mask[y0:y1, x0:x1] = box
    level = float(img[y0:y1, x0:x1][box].mean())
    shift = _signed(rng, rng.uniform(40, 110), level)  # same shift on every channel: gray stays gray
    out = img.copy()
    out[y0:y1, x0:x1] += cov[..., None] * shift
    return out, mask


def _spot(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = img.shape[0]
    yy, xx = np.arange(s)[:, None], np.arange(s)[None, :]
    out = img.copy()
    mask = np.zeros((s, s), dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        r = max(1.5, rng.uniform(2, 7) * s / REF)
        cy, cx = rng.uniform(r + 2, s - 3 - r, 2)
        cov, disc = _coverage(np.hypot(yy - cy, xx - cx), r)
        level = float(out[disc].mean())
        # Dark (hole) or bright (blowhole glint), towards 0 or 255; flipped when the surface is already there.
        target = 0.0 if rng.random() < 0.5 else 255.0
        if abs(target - level) < 60:
            target = 255.0 - target
        alpha = rng.uniform(0.6, 0.9)
        out += (cov * alpha)[..., None] * (target - out)
        mask |= disc
    return out, mask


def _texture(img: np.ndarray, region: np.ndarray, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """(S, S, 3) float foreign texture (smooth noise or stripes) whose mean on ``region`` is far from the
    image's there, so the defect is visible even where the texture's contrast happens to be low."""
    s = img.shape[0]
    n_ch = 1 if gray else 3
    if rng.random() < 0.5:
        res = int(rng.integers(8, 17))
        noise = np.stack([_perlin((s, s), (res, res), rng) for _ in range(n_ch)], -1) / 0.7
    else:
        th, period = rng.uniform(0, np.pi), max(3.0, rng.uniform(4, 12) * s / REF)
        yy, xx = np.arange(s)[:, None], np.arange(s)[None, :]
        phase = rng.uniform(0, 2 * np.pi, n_ch)
        noise = np.sin(2 * np.pi * (yy * np.sin(th) + xx * np.cos(th))[..., None] / period + phase)
    noise = noise - noise[region].mean(0)  # zero mean on the region: the offset below sets the mean change
    amp = rng.uniform(20, 50)
    base = float(img[region].mean()) + _signed(rng, rng.uniform(50, 90), float(img[region].mean()))
    tint = np.zeros(n_ch) if gray else rng.uniform(-20, 20, 3)
    tex = np.clip(base + tint + amp * noise, 0, 255)
    return np.broadcast_to(tex, img.shape) if gray else tex


def _perlin_region(s: int, rng: np.random.Generator) -> np.ndarray:
    """(S, S) bool: the top fraction f ~ U(1%, 6%) of a Perlin noise at a random DRAEM-style scale.

    A quantile threshold (not DRAEM's fixed 0.5) keeps the area in range and never empty."""
    res = tuple(int(2 ** rng.integers(1, 4)) for _ in range(2))  # 2, 4 or 8 cells per axis
    noise = _perlin((s, s), res, rng)
    frac = rng.uniform(0.01, 0.06)
    thr = np.quantile(noise, 1 - frac)
    region = noise > thr
    if not region.any():  # only for a flat noise, which a random lattice does not give; keep the guarantee
        region[np.unravel_index(np.argmax(noise), noise.shape)] = True
    return region


def _perlin_defect(img: np.ndarray, rng: np.random.Generator, gray: bool) -> tuple[np.ndarray, np.ndarray]:
    region = _perlin_region(img.shape[0], rng)
    out = img.copy()
    if rng.random() < 0.5:
        beta = rng.uniform(0.5, 1.0)  # opacity, as DRAEM's beta: the old surface may show through
        out[region] = (1 - beta) * img[region] + beta * _texture(img, region, gray, rng)[region]
    else:
        delta = _signed(rng, rng.uniform(30, 80), float(img[region].mean()))
        gain = np.ones(3) if gray else 1 + rng.uniform(-0.3, 0.3, 3)  # a colour shift, not only brightness
        out[region] += delta * gain
    return out, region


def _cutpaste(img: np.ndarray, donor: np.ndarray, rng: np.random.Generator, gray: bool
              ) -> tuple[np.ndarray, np.ndarray]:
    s = img.shape[0]
    ph, pw = (max(2, int(round(rng.uniform(0.08, 0.25) * s))) for _ in range(2))
    sy, sx = int(rng.integers(0, s - ph + 1)), int(rng.integers(0, s - pw + 1))
    patch = donor[sy:sy + ph, sx:sx + pw].astype(np.float64)
    if gray:  # a colour donor must not put colour into a gray image
        patch = np.repeat(patch.mean(-1, keepdims=True), 3, -1)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    patch = np.rot90(patch, int(rng.integers(0, 4)))  # odd turns swap the sides
    ph, pw = patch.shape[:2]
    while True:  # another place than the source, so donor = image still gives a defect
        dy, dx = int(rng.integers(0, s - ph + 1)), int(rng.integers(0, s - pw + 1))
        if (dy, dx) != (sy, sx):
            break
    out = img.copy()
    out[dy:dy + ph, dx:dx + pw] = patch
    mask = np.zeros((s, s), dtype=bool)
    mask[dy:dy + ph, dx:dx + pw] = True
    return out, mask


def _local_sd(img: np.ndarray, where: np.ndarray) -> float:
    """The standard deviation of the image's fine texture (the gray level minus its 5 x 5 box mean) over `where`
    (a box around the defect): the variation a hard defect's contrast is stated in, the surface's own grain, not
    the structure of an object. At least 2 gray levels, so a flat image still gets a defect."""
    gray = img.mean(-1)
    return max(2.0, float((gray - _blur(gray, 2))[where].std()))


def _around(mask: np.ndarray, pad: int) -> np.ndarray:
    """(S, S) bool: the bounding box of mask, grown by pad pixels (clipped to the image)."""
    ys, xs = np.nonzero(mask)
    box = np.zeros_like(mask)
    box[max(0, ys.min() - pad):ys.max() + pad + 1, max(0, xs.min() - pad):xs.max() + pad + 1] = True
    return box


def _blur(x: np.ndarray, r: int) -> np.ndarray:
    """Separable box blur of an (S, S) or (S, S, C) array with window 2r + 1 (edges replicated)."""
    if r < 1:
        return x
    for axis in (0, 1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r + 1, r)
        c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis)
        n = x.shape[axis]
        x = (np.take(c, range(2 * r + 1, 2 * r + 1 + n), axis=axis) - np.take(c, range(0, n), axis=axis)) / (2 * r + 1)
    return x


def _crack(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = img.shape[0]
    scale = s / REF
    half = max(0.5, rng.uniform(1, 2) * scale) / 2
    margin = int(np.ceil(half)) + 3
    paths = []
    n = int(rng.uniform(0.15, 0.4) * s / max(1.0, 2 * scale))  # steps of about 2 px at 224
    start = rng.uniform(0.25 * s, 0.75 * s, 2)
    for branch in range(1 + int(rng.random() < 0.4)):  # sometimes a second, shorter branch
        heading = rng.uniform(0, 2 * np.pi)
        p0 = start if branch == 0 else paths[0][len(paths[0]) // 2]
        steps = n if branch == 0 else n // 2
        turns = np.cumsum(rng.normal(0, 0.35, steps))  # a jagged, wandering course
        d = 2 * scale * np.stack([np.sin(heading + turns), np.cos(heading + turns)], 1)
        paths.append(np.clip(p0 + np.cumsum(d, 0), margin, s - 1 - margin))
    mask = np.zeros((s, s), dtype=bool)
    cov = np.zeros((s, s))
    yy, xx = np.arange(s)[:, None], np.arange(s)[None, :]
    for pts in paths:
        c, m = _coverage(_polyline_distance(pts, yy, xx), half)
        cov, mask = np.maximum(cov, c), mask | m
    if not mask.any():  # a sub-pixel line: keep its centre pixels
        for y, x in np.rint(paths[0]).astype(int):
            mask[y, x] = True
        cov = np.maximum(cov, mask.astype(float))
    sd = _local_sd(img, _around(mask, int(8 * scale)))
    shift = _signed(rng, rng.uniform(1, 4) * sd, float(img[mask].mean()))
    return img + cov[..., None] * shift, mask


def _stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = img.shape[0]
    res = int(2 ** rng.integers(1, 3))  # 2 or 4 cells: large, smooth regions
    noise = _perlin((s, s), (res, res), rng)
    frac = rng.uniform(0.05, 0.25)
    hard = noise > np.quantile(noise, 1 - frac)
    alpha = _blur(hard.astype(float), max(1, int(rng.uniform(3, 8) * s / REF)))  # soft edges
    mask = alpha >= 0.5
    if not mask.any():
        mask, alpha = hard, hard.astype(float)
    sd = _local_sd(img, _around(mask, int(8 * s / REF)))
    shift = _signed(rng, rng.uniform(1, 4) * sd, float(img[mask].mean()))
    return img + alpha[..., None] * shift, mask


def _texture_change(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = img.shape[0]
    res = tuple(int(2 ** rng.integers(1, 4)) for _ in range(2))
    noise = _perlin((s, s), res, rng)
    region = noise > np.quantile(noise, 1 - rng.uniform(0.02, 0.10))
    if rng.random() < 0.5:  # the texture smoothed away (a worn, frayed surface)
        other = _blur(img, max(1, int(rng.uniform(2, 5) * s / REF)))
    else:  # the image's own texture from elsewhere, zoomed 1.5-2.5x (a coarser grain)
        z = rng.uniform(1.5, 2.5)
        span = int(s / z)
        oy, ox = rng.integers(0, s - span + 1, 2)
        idx = np.minimum((np.arange(s) / z).astype(int), span - 1)
        other = img[oy + idx][:, ox + idx]
    other = other - other[region].mean(0) + img[region].mean(0)  # the same mean: only the texture differs
    out = img.copy()
    out[region] = other[region]
    if np.abs(out - img)[region].mean() < 1.0:  # a surface without texture has none to change: stain it instead
        return _stain(img, rng)
    return out, region


def _dent(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = img.shape[0]
    yy, xx = np.arange(s)[:, None], np.arange(s)[None, :]
    out = img.copy()
    mask = np.zeros((s, s), dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        r = max(1.5, rng.uniform(3, 10) * s / REF)
        cy, cx = rng.uniform(r + 2, s - 3 - r, 2)
        d = np.hypot(yy - cy, xx - cx)
        w = np.clip(1.5 - d / r, 0, 1)  # full inside r / 2, fading to 0 at 1.5 r
        blob = w >= 0.5
        sd = _local_sd(img, _around(blob, int(r)))
        out += (w * _signed(rng, rng.uniform(1, 3) * sd, float(img[blob].mean())))[..., None]
        mask |= blob
    return out, mask


def _check(name: str, a: np.ndarray, kind: str) -> None:
    if not (isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
            and a.shape[0] == a.shape[1] >= 32):
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"defect {kind!r}: {name} must be an (S, S, 3) uint8 array with S >= 32, got {got}")


def paint_defect(image: np.ndarray, kind: str, rng: np.random.Generator, donor: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """image (S, S, 3) uint8 (S is any size >= 32, typically 224) -> (defective image (S, S, 3) uint8, mask (S, S) uint8 in {0,1}).
    donor: another normal image of the same category (S, S, 3) uint8, required for 'cutpaste' (ValueError otherwise)."""
    if kind not in ALL_KINDS:
        raise ValueError(f"unknown defect kind {kind!r}; expected one of {', '.join(ALL_KINDS)}")
    _check("image", image, kind)
    gray = _is_gray(image)
    img = image.astype(np.float64)  # a copy: the caller's array is never written
    if kind == "scratch":
        out, mask = _scratch(img, rng)
    elif kind == "spot":
        out, mask = _spot(img, rng)
    elif kind == "perlin":
        out, mask = _perlin_defect(img, rng, gray)
    elif kind in HARD_KINDS:
        out, mask = {"crack": _crack, "stain": _stain, "texture": _texture_change, "dent": _dent}[kind](img, rng)
    else:
        if donor is None:
            raise ValueError("defect 'cutpaste' needs a donor image (another normal image of the category)")
        _check("donor", donor, kind)
        if donor.shape != image.shape:
            raise ValueError(f"defect 'cutpaste': donor shape {donor.shape} differs from image shape {image.shape}")
        out, mask = _cutpaste(img, donor, rng, gray)
    return _to_u8(out), mask.astype(np.uint8)
