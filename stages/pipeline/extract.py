"""Stage `extract`: frozen backbone features F_in (Sec 5) for every indexed image, computed once.

Training the base model then reads cached features instead of rerunning the backbone every step.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from stages.models.backbone import load_backbone
from stages.pipeline.chunked import chunks
from stages.pipeline import dist
from stages.store.cache import RunStore
from stages.pipeline.runtime import StageResult, resolve_device
from stages.config.settings import key_of
from stages.pipeline.params import ExtractParams  # noqa: F401 (torch-free, re-exported)

STAGE = "extract"


def images_to_tensor(batch, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def run(store: RunStore, p: ExtractParams, weights: Path | None = None, device: str = "auto",
        progress: bool = True) -> StageResult:
    t0 = time.perf_counter()
    index = store.current("index")
    dev = resolve_device(device)
    net = load_backbone(p.backbone, weights, p.feature_size).to(dev).eval()
    # The weights' hash is part of the key: other weights under the same name never reuse these features.
    params = {**key_of(p), "weights_id": net.weights_id}
    entry, cached = store.begin(STAGE, params, {"index": index.key}, exclusive=False)
    images = index.array("images")
    n, fs = images.shape[0], p.feature_size
    summary = f"{n} x {net.out_channels}x{fs}x{fs} features ({p.backbone})"
    if cached:
        return StageResult(STAGE, entry.key, True, time.perf_counter() - t0, summary)
    entry.update(channels=net.out_channels, backbone_channels=list(net.channels), device=str(dev),
                 weights_file=str(Path(weights).resolve()) if weights else None)  # for printed rerun commands
    dist.start_together(dev)  # torchrun: ranks begin claiming at once, so each takes its own share
    feats = entry.require_array("features", (n, net.out_channels, fs, fs), "float32")
    with torch.inference_mode():
        for a, b in chunks([entry], n, "extract", progress, shared=True):
            feats[a:b] = net(images_to_tensor(images[a:b], dev)).cpu().numpy()
    entry.complete()
    return StageResult(STAGE, entry.key, False, time.perf_counter() - t0, summary)
