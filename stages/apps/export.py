"""Export a trained run for deployment: graphs, a manifest, and a standalone inference example.

  base.onnx / base.pt   image (B, 3, S, S) float RGB in [0, 1] -> H_base (B, S, S): the frozen backbone, the
                        reconstruction transformer and Eq 2, upsampled bilinearly to the image (as predict does);
                        with --residual-norm mahalanobis also category (B,) int64 (-1: nearest category)
  unet.onnx / unet.pt   the conditional UNet: (x_t (B, 3, s, s), t (B,) int64, I_in (B, 3, s, s)) -> eps
  manifest.json         preprocessing (size, --resize, value range), the image score (pool), the fusion settings
                        and their normalisation statistics, thresholds per category, drdc's version, the keys
  infer.py              a short example that needs only onnxruntime (or torch), numpy and pillow: base-only
                        scores and maps of image files, as `drdc predict --base-only` gives them

Batch size is dynamic in every graph. ONNX opset OPSET. The diffusion branch's reverse process (Eq 13-15) is a
loop around unet.onnx; the example covers the base path, the manifest holds what the loop needs.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stages.errors import ConfigError
from stages.method.residual import residual_map
from stages.pipeline.trained import SCHEDULE_DEFAULTS
from stages.store.cache import RunStore

OPSET = 18
FORMATS = ("onnx", "torchscript")
EXAMPLE = Path(__file__).with_name("export_example.py")


class BaseGraph(nn.Module):
    """image (B, 3, S, S) in [0, 1] -> H_base (B, S, S): backbone, reconstruction, Eq 2, bilinear upsampling.

    With the run's residual Gaussians (infer-base --residual-norm mahalanobis) the graph takes a second input,
    category (B,) int64: the row's index in the manifest's residual categories, or -1 for the nearest one at
    each position (as predict scores an image of unknown category)."""

    def __init__(self, backbone: nn.Module, base: nn.Module, size: int, residual=None) -> None:
        super().__init__()
        self.backbone, self.base, self.size = backbone, base, size
        self.mahalanobis = residual is not None
        on = self.mahalanobis  # without the Gaussians (None buffers) residual_map is Eq 2
        self.register_buffer("channels", torch.tensor(residual.channels, dtype=torch.long) if on else None)
        self.register_buffer("mu", residual.mu.float() if on else None)  # (K, P, C')
        self.register_buffer("prec", residual.prec.float() if on else None)  # (K, P, C', C'): float32 in the graph

    def forward(self, images: torch.Tensor, category: torch.Tensor | None = None) -> torch.Tensor:
        f_in = self.backbone(images)
        h = residual_map(f_in, self.base(f_in), self.channels, self.mu, self.prec, category)
        return F.interpolate(h[:, None], size=(self.size, self.size), mode="bilinear", align_corners=False)[:, 0]


class UNetGraph(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(x_t, cond, t)


def _save(model: nn.Module, inputs: tuple, names: list[str], out: str, path: Path, fmt: str) -> Path:
    model = model.eval()
    if fmt == "torchscript":
        with torch.no_grad():
            torch.jit.trace(model, inputs, check_trace=False).save(str(path.with_suffix(".pt")))
        return path.with_suffix(".pt")
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError("onnx needs the onnx and onnxscript packages: pip install 'drdc[export]' "
                          "(or use the torchscript format)", "format") from None
    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes = tuple({0: batch} for _ in names)  # by position: the graphs' input names are the ONNX ones
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter narrates each step
        torch.onnx.export(model, inputs, str(path.with_suffix(".onnx")), input_names=names, output_names=[out],
                          dynamic_shapes=shapes, opset_version=OPSET, dynamo=True, external_data=False)
    return path.with_suffix(".onnx")


def export(store: RunStore, dest: Path, fmt: str = "onnx", weights: Path | None = None,
           base_only: bool = False) -> dict:
    """Write the graphs, manifest.json and infer.py of the run's current models into dest; returns the manifest."""
    from stages import __version__
    from stages.apps.calibrate import current as current_thresholds
    from stages.apps.predictor import Predictor

    if fmt not in FORMATS:
        raise ConfigError(f"must be one of {', '.join(FORMATS)} (got {fmt!r})", "format")
    pred = Predictor(store, "cpu", base_only=base_only, weights=weights)
    dest.mkdir(parents=True, exist_ok=True)
    s = pred.size
    base = BaseGraph(pred.backbone, pred.base, s, pred.residual)
    inputs, names = ((torch.rand(2, 3, s, s), torch.tensor([0, -1])), ["image", "category"]) if base.mahalanobis \
        else ((torch.rand(2, 3, s, s),), ["image"])
    graphs = {"base": _save(base, inputs, names, "h_base", dest / "base", fmt).name}
    if pred.unet is not None:
        d = pred.diff_size
        x, t = torch.randn(2, 3, d, d), torch.tensor([250, 50])
        conditioned = pred.unet.config.model_condition
        graphs["unet"] = _save(UNetGraph(pred.unet), (x, t, x.clone()) if conditioned else (x, t),
                               ["x_t", "t", "cond"] if conditioned else ["x_t", "t"], "eps", dest / "unet", fmt).name
    thresholds, _ = current_thresholds(store, pred)
    manifest = {
        "drdc": __version__, "format": fmt, "opset": OPSET if fmt == "onnx" else None, "graphs": graphs,
        "preprocess": {"size": s, "resize": pred.index.params.get("resize", "squash"), "color": "RGB",
                       "range": "float32 in [0, 1] (uint8 / 255), NCHW", "resample": "bilinear"},
        "score": {"pool": pred.pool, "rule": "max of the pool x pool average-pooled map (stride 1)"},
        "mode": pred.mode, "categories": pred.index.attrs["categories"],
        "base_inputs": names,  # "category": index into residual_categories, -1 = nearest
        "residual_categories": None if pred.residual is None else pred.residual.categories,
        "fusion": None if pred.fusion is None else pred.fusion.as_dict(),
        "diffusion_size": getattr(pred, "diff_size", None),
        "schedule": None if pred.unet is None else {  # Eq 3-4, what the reverse loop around unet needs
            "kind": "linear", **{k: pred.train_diff.params.get(k, v) for k, v in SCHEDULE_DEFAULTS.items()}},
        "normalisation": None if pred.stats is None else {  # (n_cat, 2, S, S): shift, scale of each source map
            "categories": pred.stats.all.categories, "base": pred.stats.all.base.tolist(),
            "diff": None if pred.stats.all.diff is None else pred.stats.all.diff.tolist()},
        "thresholds": None if thresholds is None else {
            "image": thresholds.image, "image_global": thresholds.image_global, "pixel": thresholds.pixel,
            "settings_key": thresholds.key, "on_test_labels": thresholds.on_test_labels},
        "keys": store.current_keys,
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.copyfile(EXAMPLE, dest / "infer.py")
    return manifest
