"""Pictures of scored heatmaps, per category: ROC curves, score histograms, the worst false positives/negatives.

Reads score entries and what they were computed from (the index's resized images and masks, the heatmaps of
`infer_base` or `fuse`); writes PNGs. matplotlib's object API (Figure, no pyplot) renders with Agg and keeps no
global state, so nothing here depends on a display or on a backend setting.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc, roc_curve
from tqdm import tqdm

from stages.apps.report import labels as variant_labels
from stages.errors import CacheMissError, ConfigError
from stages.pipeline.reading import category_maps, content
from stages.pipeline.score import SOURCES
from stages.store.cache import Entry, RunStore

DPI = 100
CMAP = "inferno"  # perceptually uniform, readable in greyscale and by colour-blind readers
GT_COLOR = "#00e5ff"  # cyan: far from every inferno colour
NORMAL_COLOR, ANOMALY_COLOR = "tab:blue", "tab:orange"  # the colour-blind-safe pair of matplotlib's default cycle
ROC_SIZE = (10.0, 4.6)  # inches
HIST_SIZE = (5.2, 3.9)  # inches per variant
PANEL = 2.1  # inches per image panel of the worst grid
MAX_ROC_PIXELS = 2_000_000  # pixel ROC curves are drawn from a seeded uniform sample above this (legend: exact)
ALPHA = 0.55  # heatmap opacity over the image


@dataclass
class CategoryScores:
    """One category of one score entry. n test images of side S:
    labels (n,) {0,1}, scores (n,), masks (n,S,S) uint8, maps (n,S,S) float32 at image resolution,
    rec (n,) positions in the index (images are read from there on demand)."""

    variant: str
    category: str
    labels: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    maps: np.ndarray
    rec: np.ndarray
    has_masks: bool
    metrics: dict
    index: Entry
    valid: np.ndarray | None = None  # (n,S,S) bool: the image's own pixels (index --resize pad); None: all

    def images(self, which: np.ndarray) -> np.ndarray:
        """(k, S, S, 3) uint8: the resized test images at positions `which` of this category."""
        return self.index.array("images").get_orthogonal_selection((self.rec[which],))

    def names(self, which: np.ndarray) -> list[str]:
        records = self.index.attrs["records"]
        return [f"{records[i]['defect']}/{Path(records[i]['path']).stem}" for i in self.rec[which]]


def _input(store: RunStore, entry: Entry, stage: str) -> Entry:
    up = store.get(stage, entry.inputs[stage])
    if up is None or not up.is_complete:
        raise CacheMissError(f"score entry {entry.key} was computed from {stage} {entry.inputs[stage]}, which is gone "
                             "or incomplete; rerun ", entry.step())
    return up


def load(store: RunStore, entry: Entry, variant: str, category: str) -> CategoryScores:
    stage, array = SOURCES[entry.params["source"]]
    index, maps_entry = _input(store, entry, "index"), _input(store, entry, stage)
    pos, labels, masks, maps = category_maps(index, maps_entry, array, category)
    rec = maps_entry.array("record")[:][pos]
    return CategoryScores(variant, category, labels, entry.array("scores")[:][pos], masks, maps, rec,
                          category in index.attrs["masked_categories"], entry.attrs["metrics"].get(category, {}),
                          index, content(index, rec))


# ------------------------------------------------------------------------------------------------------- ROC
def pixel_roc(masks: np.ndarray, maps: np.ndarray, limit: int = MAX_ROC_PIXELS, valid: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of all pixels (valid: only those, the image's own, as score's metrics count); masks, maps
    (n, S, S). Above `limit` pixels, of a seeded uniform sample: a 600-pixel-wide plot cannot show more, and
    sklearn's roc_curve on 30M pixels takes a minute."""
    y, s = (masks.ravel(), maps.ravel()) if valid is None else (masks[valid], maps[valid])
    if y.size > limit:
        pick = np.random.default_rng(0).choice(y.size, limit, replace=False)
        y, s = y[pick], s[pick]
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def roc_figure(cats: list[CategoryScores]) -> Figure:
    """Image-level and pixel-level ROC, one curve per variant; the legend shows each AUROC."""
    fig = Figure(figsize=ROC_SIZE, dpi=DPI, layout="constrained")
    ax_img, ax_pix = fig.subplots(1, 2)
    multi = len(cats) > 1
    for c, color in zip(cats, [f"C{i}" for i in range(10)]):
        tag = f"{c.variant}: " if multi else ""
        if 0 < c.labels.sum() < c.labels.size:
            fpr, tpr, _ = roc_curve(c.labels, c.scores)
            ax_img.plot(fpr, tpr, color=color, lw=2, drawstyle="steps-post", label=f"{tag}AUROC {100 * auc(fpr, tpr):.1f}%")
        if c.has_masks and c.metrics.get("p_auroc") is not None:
            fpr, tpr = pixel_roc(c.masks, c.maps, valid=c.valid)
            # The legend quotes the score entry's exact value, over every pixel, as `drdc report` does.
            ax_pix.plot(fpr, tpr, color=color, lw=2, label=f"{tag}AUROC {100 * c.metrics['p_auroc']:.1f}%")
    n_pix = cats[0].masks.size
    for ax, title, empty in ((ax_img, "Image level", "needs normal and anomalous test images"),
                             (ax_pix, "Pixel level" + (f" ({MAX_ROC_PIXELS / 1e6:.0f}M-pixel sample)"
                                                       if n_pix > MAX_ROC_PIXELS else ""), "no ground-truth masks")):
        ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate", ylabel="true positive rate",
               title=title, aspect="equal")
        ax.grid(alpha=0.3)
        if len(ax.lines) > 1:
            ax.legend(loc="lower right", fontsize=9)
        else:
            ax.text(0.5, 0.55, empty, ha="center", va="center", color="0.35", fontsize=10)
    fig.suptitle(f"{cats[0].category}: ROC curves of the test set", fontsize=13)
    return fig


# -------------------------------------------------------------------------------------------------- histogram
def _edges(scores: np.ndarray, most: int = 40) -> np.ndarray:
    edges = np.histogram_bin_edges(scores, bins="auto")
    return edges if len(edges) <= most + 1 else np.linspace(scores.min(), scores.max(), most + 1)


def hist_figure(cats: list[CategoryScores]) -> Figure:
    """Image-score histograms, normal vs anomalous, one panel per variant (the paper's supplementary figure)."""
    fig = Figure(figsize=(HIST_SIZE[0] * len(cats), HIST_SIZE[1]), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(cats)))
    for ax, c in zip(axes, cats):
        edges = _edges(c.scores)
        for lab, name, color in ((0, "normal", NORMAL_COLOR), (1, "anomalous", ANOMALY_COLOR)):
            s = c.scores[c.labels == lab]
            if s.size:  # density: the classes differ in size; a light fill plus an outline keeps overlaps readable
                ax.hist(s, bins=edges, density=True, histtype="stepfilled", color=color, alpha=0.3)
                ax.hist(s, bins=edges, density=True, histtype="step", color=color, linewidth=1.8,
                        label=f"{name} (n={s.size})")
        i_auroc = c.metrics.get("i_auroc")
        ax.set(title=f"{c.variant}" + (f": I-AUROC {100 * i_auroc:.1f}%" if i_auroc is not None else ""),
               xlabel="image score (max of the mean-pooled heatmap)", ylabel="density")
        ax.xaxis.set_major_locator(MaxNLocator(6))
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=9)
    fig.suptitle(f"{cats[0].category}: image scores of normal and anomalous test images", fontsize=12)
    return fig


# -------------------------------------------------------------------------------------------------- worst cases
def overlay(image: np.ndarray, heat: np.ndarray, norm: Normalize, cmap: str = CMAP,
            alpha: float = ALPHA) -> np.ndarray:
    """(S,S,3) uint8 image + (S,S) heatmap -> (S,S,3) float RGB in [0,1]: the coloured heatmap blended over the
    image's grey levels (grey, so the heatmap's colours are never confused with the object's)."""
    grey = image.astype(np.float32).mean(axis=-1, keepdims=True) / 255.0
    colour = colormaps[cmap](np.clip(norm(heat), 0.0, 1.0))[..., :3]
    return (1.0 - alpha) * grey + alpha * colour


def draw_case(axes, image: np.ndarray, heat: np.ndarray, mask: np.ndarray, norm: Normalize,
              name: str, score: float, has_masks: bool) -> None:
    """Three panels of one test image: the image | heatmap overlay | the image with its ground-truth contour."""
    a_img, a_heat, a_gt = axes
    a_img.imshow(image)
    a_img.set_title(name, fontsize=9)
    a_heat.imshow(overlay(image, heat, norm))
    a_heat.set_title(f"score {score:.3g}", fontsize=9)
    a_gt.imshow(image)
    if mask.any():
        a_gt.contour(mask, levels=[0.5], colors=[GT_COLOR], linewidths=1.5)
        a_heat.contour(mask, levels=[0.5], colors=[GT_COLOR], linewidths=0.8, linestyles="dotted")
        a_gt.set_title("ground truth", fontsize=9)
    else:
        a_gt.set_title("ground truth: none" if has_masks else "no mask in dataset", fontsize=9)
    for a in axes:
        a.set_axis_off()


def worst(c: CategoryScores, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the k highest-scoring normal images (worst false positives, worst first) and of the k
    lowest-scoring anomalous ones (worst false negatives). Ties keep index order."""
    normal, anomalous = np.flatnonzero(c.labels == 0), np.flatnonzero(c.labels == 1)
    fp = normal[np.argsort(-c.scores[normal], kind="stable")[:k]]
    fn = anomalous[np.argsort(c.scores[anomalous], kind="stable")[:k]]
    return fp, fn


def worst_figure(c: CategoryScores, k: int) -> Figure:
    """Left: worst false positives; right: worst false negatives; one colour scale (the category's heatmap range).
    A fixed grid rather than a layout engine: constrained layout over 6k panels doubled the drawing time."""
    fp, fn = worst(c, k)
    head, foot, row_h = 0.45, 0.95, PANEL + 0.3  # inches: block titles, colour bar, one row with its titles
    width, height = 6 * PANEL + 0.9, head + k * row_h + foot
    fig = Figure(figsize=(width, height), dpi=DPI)
    gs = fig.add_gridspec(k, 7, width_ratios=[1, 1, 1, 0.25, 1, 1, 1], left=0.2 / width, right=1 - 0.2 / width,
                          top=1 - (head + 0.25) / height, bottom=foot / height, wspace=0.05, hspace=0.3 / PANEL + 0.1)
    norm = Normalize(vmin=float(c.maps.min()), vmax=float(c.maps.max()))
    blocks = (((0, 3), fp, "Worst false positives: highest-scoring normal images", "no normal test images"),
              ((4, 7), fn, "Worst false negatives: lowest-scoring anomalous images", "no anomalous test images"))
    for (c0, c1), which, title, empty in blocks:
        x_mid = (gs[0, c0].get_position(fig).x0 + gs[0, c1 - 1].get_position(fig).x1) / 2
        fig.text(x_mid, 1 - 0.25 / height, title, ha="center", va="center", fontsize=11, fontweight="bold")
        images, names = c.images(which), c.names(which)
        for row in range(k):
            axes = [fig.add_subplot(gs[row, col]) for col in range(c0, c1)]
            if row < len(which):
                i = which[row]
                draw_case(axes, images[row], c.maps[i], c.masks[i], norm, names[row], float(c.scores[i]),
                          c.has_masks)
                continue
            for a in axes:
                a.set_axis_off()
            if row == 0:
                axes[1].text(0.5, 0.5, empty, ha="center", va="center", transform=axes[1].transAxes)
    cax = fig.add_axes((0.3, 0.3 / height, 0.4, 0.14 / height))
    fig.colorbar(ScalarMappable(norm, CMAP), cax=cax, orientation="horizontal")
    cax.set_title(f"{c.category}, {c.variant} heatmap (colour range: all its test images); "
                  f"cyan: ground-truth outline", fontsize=10)
    return fig


# ------------------------------------------------------------------------------------------------------ driver
def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def _save(fig: Figure, path: Path, outs) -> Path:
    try:
        return outs.write(path, lambda tmp: fig.savefig(tmp, dpi=DPI))
    except OSError as e:
        raise ConfigError(f"{path}: cannot write ({e.strerror or e})") from None


def prepare(folder: Path, k: int) -> None:
    """Check the options before any work, so a typo fails at once."""
    if not 1 <= k <= 20:
        raise ConfigError(f"must be in [1, 20] (got {k})", "worst")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} exists and is not a folder", "plots")


def plan(entries: list[Entry], folder: Path, categories: list[str] | None = None, outs=None
         ) -> list[tuple[str, str, int | None, Path]]:
    """What write_plots writes, claimed in `outs` before anything is drawn: (kind, category, variant index or
    None, path) of roc_<cat>.png, hist_<cat>.png, worst_<cat>[_<variant>].png per category, then index.html.
    Names that would be one file (categories or variants that differ only in characters a file name cannot hold,
    or in case) are told apart (stages.apps.outputs)."""
    from stages.apps.outputs import Outputs, distinct_stems

    outs = outs if outs is not None else Outputs()
    tags = variant_labels(entries)
    scored = [c for c in entries[0].attrs["metrics"] if c != "mean"]
    unknown = [c for c in categories or [] if c not in scored]
    if unknown:
        raise ConfigError(f"no scored category {', '.join(unknown)} (scored: {', '.join(scored)})")
    wanted: list[tuple[str, str, int | None, str]] = []
    for cat in categories or scored:
        wanted += [("roc", cat, None, f"roc_{_safe(cat)}"), ("hist", cat, None, f"hist_{_safe(cat)}")]
        for i, tag in enumerate(tags):
            wanted.append(("worst", cat, i, f"worst_{_safe(cat)}" + (f"_{_safe(tag)}" if len(tags) > 1 else "")))
    stems = distinct_stems([w[3] for w in wanted] + ["index"], (".png",), set(outs.claimed), folder)
    out = [(kind, cat, i, outs.claim(folder / f"{stem}.png", "plots"))
           for (kind, cat, i, _), stem in zip(wanted, stems)]
    out.append(("index", "", None, outs.claim(folder / "index.html", "plots")))
    return out


def write_plots(store: RunStore, entries: list[Entry], folder: Path, k: int = 3, progress: bool = True,
                categories: list[str] | None = None, outs=None, planned: list | None = None) -> list[Path]:
    """roc_<cat>.png, hist_<cat>.png and worst_<cat>[_<variant>].png per category (default: every scored one),
    plus index.html. Several entries: their curves and histograms side by side, one worst grid each.
    Returns the paths written. outs, planned: the command's Outputs and the plan() it claimed before its work."""
    from stages.apps.outputs import Outputs

    prepare(folder, k)
    if outs is None:
        outs = Outputs()
    if planned is None:
        planned = plan(entries, folder, categories, outs)
    tags = variant_labels(entries)
    written: list[Path] = []
    by_cat: dict[str, list] = {}
    for kind, cat, i, path in planned:
        if kind != "index":
            by_cat.setdefault(cat, []).append((kind, i, path))
    for cat, files in tqdm(by_cat.items(), desc="plots", unit="category", disable=not progress):
        cats = [load(store, e, tag, cat) for e, tag in zip(entries, tags)]
        for kind, i, path in files:
            fig = roc_figure(cats) if kind == "roc" else hist_figure(cats) if kind == "hist" else worst_figure(cats[i], k)
            written.append(_save(fig, path, outs))
    written.append(_index_html(store, entries, tags, planned[-1][3], planned[:-1], outs))
    return written


def _index_html(store: RunStore, entries: list[Entry], tags: list[str], path: Path, planned: list, outs) -> Path:
    what = ", ".join(f"{t} = score {e.key} ({e.params['source']} heatmaps)" for t, e in zip(tags, entries))
    parts = [f"<!doctype html><meta charset='utf-8'><title>drdc plots: {html.escape(store.name)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}img{max-width:100%;border:1px solid #ddd;margin:4px}</style>",
             f"<h1>{html.escape(store.name)}</h1><p>{html.escape(what)}</p>"]
    current = None
    for kind, cat, _, p in planned:
        if cat != current:
            parts.append(f"<h2>{html.escape(cat)}</h2>")
            current = cat
        parts.append(f"<img src='{html.escape(p.name)}' alt='{html.escape(p.stem)}'>")
    try:
        return outs.write_text(path, "\n".join(parts))
    except OSError as e:
        raise ConfigError(f"{path}: cannot write ({e.strerror or e})") from None
