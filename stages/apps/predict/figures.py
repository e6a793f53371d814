"""Per-image pictures like the paper's Figure 2: original | base heatmap | diffusion heatmap | fused overlay
(| ground truth when known), each heatmap with its colour bar, score and verdict in the title.

Matplotlib's object API on the Agg canvas (no pyplot state, safe in threads and tests). Colour map 'jet', as in
the paper. The base and diffusion panels are scaled per image (their shape matters, not their level); the
fused panel is scaled so the pixel threshold sits mid-bar when one is calibrated (then a normal image looks
calm and a defect shows red, on one scale per category), else per image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

CMAP = "jet"
_VERDICT_COLOUR = {"anomalous": "#c62828", "normal": "#2e7d32", "uncalibrated": "#555555"}
DPI = 100


def _heat(fig: Figure, ax, cax, data: np.ndarray, title: str, under: np.ndarray | None = None,
          vmin: float | None = None, vmax: float | None = None, mark: float | None = None) -> None:
    """One heatmap panel with its colour bar in cax; blended at alpha 0.5 over `under` (an image) when given."""
    if under is not None:
        ax.imshow(under, interpolation="bilinear")
    lo = float(np.min(data)) if vmin is None else vmin
    hi = max(float(np.max(data)) if vmax is None else vmax, lo + 1e-12)
    norm = Normalize(lo, hi)
    ax.imshow(data, cmap=CMAP, norm=norm, alpha=0.5 if under is not None else 1.0, interpolation="bilinear")
    cb = fig.colorbar(ScalarMappable(norm, CMAP), cax=cax)  # the bar at full opacity, also for the overlay
    cb.ax.tick_params(labelsize=7, length=2, pad=1)
    cb.formatter.set_powerlimits((-2, 3))
    cb.ax.yaxis.get_offset_text().set_fontsize(7)
    if mark is not None and lo <= mark <= hi:
        cb.ax.axhline(mark, color="white", lw=3.5)
        cb.ax.axhline(mark, color="black", lw=1.5)
    ax.set_title(title, fontsize=9)


# Fixed layout in inches (no layout engine: it would draw every figure twice)
_PANEL, _BAR, _GAP, _MARGIN, _TOP, _BOTTOM = 2.6, 0.12, 0.62, 0.12, 0.62, 0.1


def _axes(fig: Figure, panels: int, bars: list[bool], width: float, height: float):
    """One square image axes per panel, and a colour-bar axes beside those with a bar."""
    axes, caxes, x = [], [], _MARGIN
    for has_bar in bars:
        ax = fig.add_axes((x / width, _BOTTOM / height, _PANEL / width, _PANEL / height))
        ax.set_xticks([])
        ax.set_yticks([])
        axes.append(ax)
        caxes.append(fig.add_axes(((x + _PANEL + 0.06) / width, _BOTTOM / height, _BAR / width, _PANEL / height))
                     if has_bar else None)
        x += _PANEL + _GAP
    return axes, caxes


def prediction_figure(image: np.ndarray, h_base: np.ndarray, h_st: np.ndarray | None, h_out: np.ndarray,
                      title: str, verdict: str, pixel_threshold: float | None = None,
                      pixel_normal: float | None = None, gt_mask: np.ndarray | None = None,
                      h_st_fused: bool = True) -> Figure:
    """image (S, S, 3) uint8; heatmaps (S, S) float; gt_mask (S, S) {0, 1} or None -> a 1-row Figure.

    With a pixel threshold, the fused panel's colour bar runs from the typical normal pixel (pixel_normal, the
    median of the calibration normals) to as far above the threshold, so the threshold is mid-bar and every
    image of the category shares one scale; the region above the threshold is outlined in white. h_st_fused False:
    the diffusion map is pictured for what it shows, but the fusion did not use it (H_out is the base map)."""
    bars = [False, True] + ([True] if h_st is not None else []) + [True] + ([False] if gt_mask is not None else [])
    panels = len(bars)
    # the last panel's colour bar and tick labels need room too
    width = 2 * _MARGIN + panels * _PANEL + (panels - 1) * _GAP + (_GAP - 0.1 if bars[-1] else 0.0)
    height = _PANEL + _TOP + _BOTTOM
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    axes, caxes = _axes(fig, panels, bars, width, height)
    k = 0
    axes[k].imshow(image, interpolation="bilinear")
    axes[k].set_title(f"input ({image.shape[1]}x{image.shape[0]})", fontsize=9)
    k += 1
    _heat(fig, axes[k], caxes[k], h_base, "base heatmap H_base")
    k += 1
    if h_st is not None:
        _heat(fig, axes[k], caxes[k], h_st, "diffusion heatmap H_ST" if h_st_fused else
              "diffusion heatmap H_ST (not fused)")
        k += 1
    label = "fused H_out" if h_st is not None and h_st_fused else "H_base"
    if pixel_threshold is not None and pixel_normal is not None and pixel_normal < pixel_threshold:
        lo, hi = pixel_normal, 2 * pixel_threshold - pixel_normal
        _heat(fig, axes[k], caxes[k], h_out, f"{label} (line: pixel threshold)", under=image, vmin=lo,
              vmax=hi, mark=pixel_threshold)
        if (h_out > pixel_threshold).any():
            axes[k].contour(h_out > pixel_threshold, levels=[0.5], colors="white", linewidths=1.2)
    else:
        _heat(fig, axes[k], caxes[k], h_out, f"{label} over the input", under=image)
    k += 1
    if gt_mask is not None:
        axes[k].imshow(gt_mask, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[k].set_title("ground truth", fontsize=9)
    fig.suptitle(title, fontsize=10, color=_VERDICT_COLOUR.get(verdict, "black"), fontweight="bold",
                 y=1 - 0.12 / height, va="top")
    return fig


def save_prediction(path: Path, **kwargs) -> Path:
    """prediction_figure(**kwargs) written as PNG to path (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = prediction_figure(**kwargs)
    fig.savefig(path, dpi=DPI)
    return path


def save_mask(path: Path, h_out: np.ndarray, pixel_threshold: float) -> Path:
    """Binary defect mask (S, S) PNG, 255 where H_out is above the pixel threshold."""
    from PIL import Image

    Image.fromarray(((h_out > pixel_threshold) * 255).astype(np.uint8), mode="L").save(path)
    return path
