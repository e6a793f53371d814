"""`drdc report --plots`: PNG sizes, curves equal to the stored metrics, the worst cases, and bad input."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import auc, roc_curve

from stages.apps import plots
from stages.store.cache import RunStore
from stages.apps.report import variants

CATS = ("disc", "grain", "weave")


def _px(inches: float) -> int:
    return round(inches * plots.DPI)


def _cyan(rgb: np.ndarray) -> int:
    """Pixels close to the ground-truth outline colour (#00e5ff); nothing else in the pictures is cyan."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return int(((r < 90) & (g > 150) & (b > 190)).sum())


def test_report_plots_current_entry(full_run, cli, tmp_path):
    out = tmp_path / "pics"
    res = cli("report", "--run", full_run, "--plots", out, "-q")
    assert "wrote 10 files" in res.output and "Mean" in res.output
    for cat in CATS:
        roc, hist = Image.open(out / f"roc_{cat}.png"), Image.open(out / f"hist_{cat}.png")
        assert roc.size == (_px(plots.ROC_SIZE[0]), _px(plots.ROC_SIZE[1]))
        assert hist.size == (_px(plots.HIST_SIZE[0]), _px(plots.HIST_SIZE[1]))
        grid = np.asarray(Image.open(out / f"worst_{cat}.png").convert("RGB"))
        assert grid.shape[1] == _px(6 * plots.PANEL + 0.9) and grid.shape[0] > 3 * _px(plots.PANEL)
        # Left half: normal images (no outline); right half: defect images, each outlined in cyan.
        half = grid.shape[1] // 2
        assert _cyan(grid[:, :half]) == 0 and _cyan(grid[:, half:]) > 50
        for png in (roc, hist):
            assert np.asarray(png.convert("L")).std() > 10  # something is drawn
    html = (out / "index.html").read_text()
    assert all(f"worst_{c}.png" in html for c in CATS)


def test_two_variants_side_by_side(full_run, tmp_path):
    store = RunStore(full_run)
    keys = {e.params["source"]: e.key for e in store.entries() if e.stage == "score"}
    entries = variants(store, [keys["base"], keys["fuse"]])
    written = plots.write_plots(store, entries, tmp_path, k=1, progress=False, categories=["disc"])
    assert [p.name for p in written] == ["roc_disc.png", "hist_disc.png", "worst_disc_base.png",
                                         "worst_disc_fuse.png", "index.html"]
    hist = Image.open(tmp_path / "hist_disc.png")
    assert hist.size == (_px(2 * plots.HIST_SIZE[0]), _px(plots.HIST_SIZE[1]))
    base, fuse = (np.asarray(Image.open(tmp_path / f"worst_disc_{v}.png").convert("RGB")) for v in ("base", "fuse"))
    assert base.shape == fuse.shape and base.shape[0] < _px(2 * plots.PANEL + 1.5)  # one row with k = 1
    assert not np.array_equal(base, fuse)  # other heatmaps (and maybe other worst images)


def test_curves_are_the_stored_metrics_and_worst_cases_are_extreme(full_run):
    store = RunStore(full_run)
    entry = variants(store, None)[0]
    for cat in CATS:
        c = plots.load(store, entry, "fuse", cat)
        assert c.maps.shape == c.masks.shape == (7, 64, 64) and c.labels.sum() == 4
        fpr, tpr, _ = roc_curve(c.labels, c.scores)
        assert auc(fpr, tpr) == pytest.approx(entry.attrs["metrics"][cat]["i_auroc"], abs=1e-9)
        fpr, tpr = plots.pixel_roc(c.masks, c.maps)  # 28k pixels: the exact curve
        assert auc(fpr, tpr) == pytest.approx(entry.attrs["metrics"][cat]["p_auroc"], abs=1e-6)
        fp, fn = plots.worst(c, 2)
        normal, anomalous = np.sort(c.scores[c.labels == 0]), np.sort(c.scores[c.labels == 1])
        np.testing.assert_array_equal(c.scores[fp], normal[::-1][:2])
        np.testing.assert_array_equal(c.scores[fn], anomalous[:2])
        assert (c.labels[fp] == 0).all() and (c.labels[fn] == 1).all()
    sampled_fpr, _ = plots.pixel_roc(c.masks, c.maps, limit=1000)  # above the limit: a sample, still a curve
    assert sampled_fpr[0] == 0 and sampled_fpr[-1] == 1


def _case(c: plots.CategoryScores, i: int, heat: np.ndarray | None = None) -> np.ndarray:
    fig = Figure(figsize=(6, 2), dpi=plots.DPI)
    axes = fig.subplots(1, 3)
    norm = Normalize(float(c.maps.min()), float(c.maps.max()))
    plots.draw_case(axes, c.images(np.array([i]))[0], c.maps[i] if heat is None else heat, c.masks[i], norm,
                    "x", float(c.scores[i]), True)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def test_case_panels_differ_between_normal_and_defective(full_run):
    store = RunStore(full_run)
    c = plots.load(store, variants(store, None)[0], "fuse", "disc")
    normal, defect = int(np.flatnonzero(c.labels == 0)[0]), int(np.flatnonzero(c.labels == 1)[0])
    a, b = _case(c, normal), _case(c, defect)
    assert a.shape == b.shape == (_px(2), _px(6), 3)
    third = a.shape[1] // 3
    assert _cyan(a) == 0 and _cyan(b[:, 2 * third :]) > 20  # the defect's outline, only on the defective image
    assert np.abs(a[:, third : 2 * third].astype(int) - b[:, third : 2 * third]).mean() > 1  # overlays differ
    # The overlay follows the heatmap: hot where the heat is, on the same image.
    img = c.images(np.array([defect]))[0]
    norm = Normalize(0.0, 1.0)
    hot = plots.overlay(img, c.masks[defect].astype(np.float32), norm)
    cold = plots.overlay(img, np.zeros((64, 64), np.float32), norm)
    inside = c.masks[defect].astype(bool)
    assert (hot[inside].sum(-1) > cold[inside].sum(-1) + 0.5).all()
    np.testing.assert_array_equal(hot[~inside], cold[~inside])


def _one_line(res, code: int, *words: str) -> None:
    lines = [ln for ln in res.stderr.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    assert res.exit_code == code and len(lines) == 1 and "Traceback" not in res.output, res.output
    assert all(w in lines[0] for w in words), lines[0]


def test_bad_input(full_run, cli, tmp_path):
    _one_line(cli("report", "--run", tmp_path / "none.zarr", "--plots", tmp_path / "p", code=None), 1, "no run store")
    _one_line(cli("report", "--run", full_run, "--variant", "zzz", "--plots", tmp_path / "p", code=None), 1,
              "--variant zzz")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    _one_line(cli("report", "--run", full_run, "--plots", blocker / "pics", code=None), 2, "--plots", "file.txt")
    _one_line(cli("report", "--run", full_run, "--plots", tmp_path / "p", "--worst", "0", code=None), 2, "--worst")
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())
