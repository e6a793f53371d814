"""Image and mask decoding: any PIL mode in, fixed-size RGB uint8 / binary mask out.

Every loader failure becomes a DataError naming the file, so a bad image in a folder of thousands is found
by its path, not by a traceback.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from stages.data.geometry import fit
from stages.errors import DataError

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# Decompression-bomb guard: a header claiming more pixels than this is refused before decoding.
MAX_PIXELS: int = 100_000_000


def _open(path: Path) -> Image.Image:
    """Open and fully decode one image, turning every PIL/OS failure into a DataError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise DataError(f"{path}: image is {w}x{h}, larger than the {MAX_PIXELS:,}-pixel limit")
            img.load()  # decodes now: a truncated file fails here, not later inside a worker
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image (PIL cannot identify it)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # PIL's own check fires first
        raise DataError(f"{path}: image is larger than the {MAX_PIXELS:,}-pixel limit") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None
    if w == 0 or h == 0:
        raise DataError(f"{path}: image has zero size")
    return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """High-bit-depth grayscale (I;16, I, F) scaled to 8 bits; PIL's own convert('L') would clip at 255."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(img, dtype=np.float64) / 65535.0
    elif img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if a.max(initial=0) > 255 else 255.0
        a = a / hi
    else:
        return img
    return Image.fromarray(np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8), mode="L")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: cannot read image header ({e})") from None


def load_rgb(path: Path, size: int, resize: str = "squash") -> tuple[np.ndarray, tuple[int, int]]:
    """Decode any mode (L, LA, P, RGBA, CMYK, 16-bit, ...) to RGB and bring it to size x size (stages.data.geometry:
    squash, pad or center-crop).

    Returns (image (size, size, 3) uint8, original (width, height)). Alpha is dropped, not composited:
    industrial photos carry no meaningful transparency.
    """
    img = _open(path)
    orig = img.size
    img = _to_8bit(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return fit(img, size, resize, Image.Resampling.BILINEAR).astype(np.uint8, copy=False), orig


def load_mask(path: Path, expect_size: tuple[int, int], size: int, resize: str = "squash") -> np.ndarray:
    """Decode a ground-truth mask, check it matches its image's (width, height), binarise at half range,
    bring it to size x size with nearest neighbour as its image (geometry `resize`). Returns (size, size) uint8
    in {0, 1}."""
    img = _open(path)
    if img.size != expect_size:
        raise DataError(
            f"{path}: mask is {img.size[0]}x{img.size[1]} but its image is {expect_size[0]}x{expect_size[1]}"
        )
    img = _to_8bit(img)
    if img.mode != "L":
        img = img.convert("L")
    binary = Image.fromarray(((np.asarray(img) >= 128) * 255).astype(np.uint8), mode="L")
    return (fit(binary, size, resize, Image.Resampling.NEAREST, fill="zero") > 0).astype(np.uint8)


def to_model_space(batch: np.ndarray, size: int, as_uint8: bool = False):
    """(B, H, W, 3) uint8 images -> (B, 3, size, size) torch tensor: the diffusion branch's input, in [-1, 1]
    (float32), or rounded back to uint8 when as_uint8 (4x less memory for a training set kept in RAM)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    if as_uint8:
        return _resized(x, size).round_().clamp_(0, 255).to(torch.uint8)
    return model_space(x, size)


def model_space(x, size: int):
    """(B, 3, H, W) float pixel values in [0, 255] -> (B, 3, size, size) in [-1, 1]: to_model_space on a tensor
    (the exported graph takes float images)."""
    return _resized(x, size) / 127.5 - 1.0


def _resized(x, size: int):
    """Downsizing uses antialiased bilinear interpolation so thin defects fade rather than alias."""
    import torch.nn.functional as F

    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x
