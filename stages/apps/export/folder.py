"""Export a trained run for deployment: graphs, a manifest, and a standalone inference example.

  base.onnx / base.pt   (image (B, 3, S, S) float RGB in [0, 1], category (B,) int64) -> H_base (B, S, S): the
                        frozen backbone, the reconstruction transformer and Eq 2 (or the run's residual Gaussians),
                        upsampled bilinearly to the image, as `drdc predict --base-only` makes it
  drdc.onnx / drdc.pt   what `drdc predict` scores, as one graph: (image, category, masks, noise) -> (H_out, H_base,
                        H^ST), each (B, S, S): the base map, the diffusion branch's reverse process (Eq 9-15) over
                        the fused grid sizes and timesteps, Eq 16-19. The random masks and noise are inputs, so the
                        caller draws them (manifest "draws"); without the diffusion branch (image, category) ->
                        (H_out, H_base)
  unet.onnx / unet.pt   the conditional UNet alone: (x_t (B, 3, s, s), t (B,) int64, I_in (B, 3, s, s)) -> eps
  manifest.json         preprocessing (size, --resize, value range), the image score (pool), the fusion settings
                        and their normalisation statistics, how to draw the masks and noise, thresholds per
                        category, drdc's version, the keys
  infer.py              a short example that needs only onnxruntime (or torch), numpy and pillow: the scores and
                        maps of image files, as `drdc predict` gives them (exactly so when torch draws the masks
                        and noise, with the same generators as drdc; numpy's draws are another sample)

Batch size is dynamic in every graph. ONNX opset OPSET. category: an index into the manifest's categories, -1 for
an image of unknown category.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from stages.apps.choices import FORMATS
from stages.apps.export.graphs import BaseGraph, DRDCGraph, UNetGraph, draw_layout
from stages.errors import ConfigError
from stages.pipeline.trained import SCHEDULE_DEFAULTS
from stages.store.cache import RunStore

OPSET = 18
EXAMPLE = Path(__file__).with_name("infer.py")


@contextlib.contextmanager
def _quiet(logger: str):
    """The logger shows errors only, while the block runs."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"must be one of {', '.join(FORMATS)} (got {fmt!r})", "format")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            raise ConfigError("onnx needs the onnx and onnxscript packages: pip install 'drdc[export]' "
                              "(or use the torchscript format)", "format") from None


def _save(model: nn.Module, inputs: tuple, names: list[str], outs: list[str], path: Path, fmt: str) -> Path:
    """Trace model into the file `path` (its name as given)."""
    model = model.eval()
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks run once, at trace time
            with open(path, "wb") as f:  # a file object: the archive is named "archive", not after the file
                torch.jit.save(torch.jit.trace(model, inputs, check_trace=False), f)
        return path
    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes = tuple({0: batch} for _ in names)  # by position: the graphs' input names are the ONNX ones
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _quiet("onnxscript"):
        warnings.simplefilter("ignore")  # the exporter narrates each step, its optimizer logs what it skips
        torch.onnx.export(model, inputs, str(path), input_names=names, output_names=outs,
                          dynamic_shapes=shapes, opset_version=OPSET, dynamo=True, external_data=False)
    return path


def export(store: RunStore, dest: Path, fmt: str = "onnx", weights: Path | None = None,
           base_only: bool = False, progress: bool = True, overwrite: bool = False) -> dict:
    """Write the graphs, manifest.json and infer.py of the run's current models into dest; returns the manifest.
    Every file is claimed before the first graph is traced (stages.apps.outputs: an existing one is refused unless
    overwrite)."""
    from stages import __version__
    from stages.apps.calibrate import current as current_thresholds
    from stages.apps.outputs import Outputs
    from stages.apps.predict.predictor import Predictor

    _check_format(fmt)
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"{dest} exists and is not a folder", "out")
    out_files = Outputs(overwrite)
    for name in ("manifest.json", "infer.py"):  # before the models load: a file in the way is named at once
        out_files.claim(dest / name, "out")
    pred = Predictor(store, "cpu", base_only=base_only, weights=weights)
    s = pred.size
    image, category = torch.rand(2, 3, s, s), torch.tensor([0, -1])
    # (name, module, example inputs, input names, output names) of each graph, traced below
    jobs = [("base", BaseGraph(pred), (image, category), ["image", "category"], ["h_base"])]
    draws = None
    if pred.fusion is not None:
        inputs, names, outs = (image, category), ["image", "category"], ["h_out", "h_base"]
        if pred.unet is not None:
            d, n_s, layout = pred.diff_size, pred.fusion.n_s, draw_layout(pred)
            most = max(e["noise_draws"] for e in layout)
            inputs += (torch.ones(2, len(layout), n_s, d, d), torch.randn(2, len(layout), most, n_s, 3, d, d))
            names, outs = names + ["masks", "noise"], outs + ["h_st"]
            draws = {"seed": pred.fusion.seed, "n_s": n_s, "size": d, "noise_draws_max": most, "layout": layout,
                     "id": "an image's id: -1 - int(sha256(file bytes).hexdigest()[:15], 16)",
                     "generator": "torch.Generator().manual_seed(int.from_bytes(sha256(f'drdc:{seed}:{id}:"
                                  "{stream}').digest()[:8], 'big') & (2**63 - 1))",
                     "masks": "cells c x c; owner[randperm(G)] = arange(G) % n_s; M_i = 0 on set i's cells",
                     "noise": "noise_draws draws of randn(n_s, 3, size, size), in order"}
        if pred.fusion.scores_own_map:  # image scores from a fusion of their own (fuse --image-gamma)
            outs = outs + ["h_img"]
        jobs.append(("drdc", DRDCGraph(pred), inputs, names, outs))
    if pred.unet is not None:
        d = pred.diff_size
        x, t = torch.randn(2, 3, d, d), torch.tensor([250, 50])
        conditioned = pred.unet.config.model_condition
        jobs.append(("unet", UNetGraph(pred.unet), (x, t, x.clone()) if conditioned else (x, t),
                     ["x_t", "t", "cond"] if conditioned else ["x_t", "t"], ["eps"]))
    for name, *_ in jobs:
        out_files.claim(dest / f"{name}{SUFFIX[fmt]}", "out")
    graphs = {}
    with tqdm(jobs, desc="export", unit="graph", disable=not progress) as bar:
        for name, model, inputs, names, outs in bar:
            bar.set_postfix_str(f"{name}{SUFFIX[fmt]}")  # tens of seconds each (ONNX)
            path = out_files.write(dest / f"{name}{SUFFIX[fmt]}",
                                   lambda tmp, m=model, i=inputs, n=names, o=outs: _save(m, i, n, o, tmp, fmt))
            graphs[name] = path.name
    thresholds, _ = current_thresholds(store, pred)
    manifest = {
        "drdc": __version__, "format": fmt, "opset": OPSET if fmt == "onnx" else None, "graphs": graphs,
        "preprocess": {"size": s, "resize": pred.index.params.get("resize", "squash"), "color": "RGB",
                       "range": "float32 in [0, 1] (uint8 / 255), NCHW", "resample": "bilinear"},
        "score": {"pool": pred.pool, "rule": "max of the pool x pool average-pooled map (stride 1)",
                  # which output of drdc.onnx the image score is taken from (h_img: a fusion of its own)
                  "map": "h_img" if pred.fusion is not None and pred.fusion.scores_own_map else "h_out"},
        "mode": pred.mode, "categories": pred.index.attrs["categories"],
        "inputs": {"category": "index into categories, -1: unknown (nearest Gaussian / mean statistics)"},
        "draws": draws,  # what drdc.onnx's masks and noise hold (None: no diffusion branch)
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
    out_files.write_text(dest / "manifest.json", json.dumps(manifest, indent=1))
    out_files.write(dest / "infer.py", lambda tmp: shutil.copyfile(EXAMPLE, tmp))
    return manifest
