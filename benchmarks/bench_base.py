"""Benchmark: the base branch, production stages against a plain fp32 loop, side by side.

A real run store is built in a temp dir (synthetic data, index, extract). Then, alternating:
  train-base  stages.pipeline.train_base.run (a new seed each repeat: a new entry; per-epoch checkpoints, the store)
      vs      a plain loop: same model config, AdamW, MSE, grad clip and batches, features already in memory
  infer-base  stages.pipeline.infer_base.run (reads features from the store chunk by chunk, writes H_base)
      vs      a plain loop: model(f) and Eq 2 over in-memory batches of the same size
The ratios show what the production bookkeeping (store IO, checkpoints, resume state) costs.

    python benchmarks/bench_base.py                   # cpu preset model, 224 px, 96 train / 24 test images
    python benchmarks/bench_base.py --epochs 5 --repeats 5
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import alternate, fmt, machine, median, save_json, show
from runstore import StoreSpec, build
from torch import nn

from stages.data.dataset import split_indices, split_train
from stages.models.reconstruction import UniADReconstruction, base_heatmap
from stages.pipeline import infer_base, train_base
from stages.pipeline.trained import load_model
from stages.store.cache import RunStore
from stages.store.claims import CHUNK
from stages.config.presets import build as preset_build


def plain_train(fit: torch.Tensor, p: train_base.TrainBaseParams, cfg) -> None:
    """The training maths of train-base, nothing else: no store, no checkpoints, no progress bar."""
    torch.manual_seed(p.seed)
    model = UniADReconstruction(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    for epoch in range(p.epochs):
        perm = torch.randperm(len(fit))
        for i in range(0, len(fit), p.batch_size):
            x = fit[perm[i : i + p.batch_size]]
            loss = nn.functional.mse_loss(model(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            opt.step()


@torch.inference_mode()
def plain_infer(model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    return torch.cat([base_heatmap(f, model(f)) for f in feats.split(CHUNK)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    ap.add_argument("--train-images", type=int, default=32, help="train/good images per category (3 categories)")
    ap.add_argument("--test-images", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per timed train-base run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--quick", action="store_true", help="toy sizes: a smoke run, < 20 s")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    p = preset_build(train_base.TrainBaseParams, "train_base", a.preset, epochs=a.epochs, holdout=0.0)
    spec = StoreSpec(image_size=224, n_test=a.test_images, n_train=a.train_images)
    if a.quick:
        spec = StoreSpec(image_size=64, n_test=4, n_train=8, feature_size=8, categories=("weave",))
        p = dataclasses.replace(p, hidden_dim=32, dim_feedforward=64, nhead=4, num_encoder_layers=1,
                                num_decoder_layers=1, neighbor_size=3, batch_size=4, epochs=1)
        a.repeats = 1
    with tempfile.TemporaryDirectory(prefix="drdc-bench-base-") as tmp:
        t0 = time.perf_counter()
        store: RunStore = build(Path(tmp), spec, diffusion=False)
        build_s = time.perf_counter() - t0
        ex = store.current("extract")
        records = store.current("index").attrs["records"]
        feats_all = ex.array("features")
        fit_idx, _ = split_train(records, 0.0, p.seed)
        fit = torch.from_numpy(feats_all.get_orthogonal_selection((fit_idx,)))
        test = torch.from_numpy(feats_all.get_orthogonal_selection((split_indices(records, "test"),)))
        cfg = p.model_config(fit.shape[1], fit.shape[-1])
        steps = p.epochs * math.ceil(len(fit) / p.batch_size)
        k = {"n": 0}

        def prod_train() -> None:
            k["n"] += 1
            train_base.run(store, dataclasses.replace(p, seed=100 + k["n"]), device="cpu", progress=False)

        train = alternate({"train-base (stage)": prod_train, "plain fp32 loop": lambda: plain_train(fit, p, cfg)},
                          a.repeats, torch.device("cpu"), warmup=False)
        trained = store.current("train_base")
        model = load_model(trained, torch.device("cpu"))
        plain_infer(model, test)  # warm-up
        infer: dict[str, list[float]] = {"infer-base (stage)": [], "plain fp32 loop": []}
        for r in range(a.repeats * 3):  # infer-base is cached once done: each production run gets a fresh copy
            copy = RunStore(shutil.copytree(store.path, Path(tmp) / f"copy{r}.zarr"))
            t1 = time.perf_counter()
            infer_base.run(copy, device="cpu", progress=False)
            infer["infer-base (stage)"].append(time.perf_counter() - t1)
            infer["plain fp32 loop"] += alternate({"plain": lambda: plain_infer(model, test)}, 1,
                                                  torch.device("cpu"), warmup=False)["plain"]
    info = machine(torch.device("cpu"))
    config = {"preset": a.preset, "train images": len(fit), "test images": len(test), "features":
              tuple(fit.shape[1:]), "hidden": p.hidden_dim, "batch": p.batch_size, "epochs/run": p.epochs,
              "steps/run": steps, "repeats": a.repeats, "store build (s)": f"{build_s:.0f}"}
    ts, tp = median(train["train-base (stage)"]), median(train["plain fp32 loop"])
    i_s, i_p = median(infer["infer-base (stage)"]), median(infer["plain fp32 loop"])
    rows = [["train-base (stage)", f"{steps / ts:.3g} steps/s", fmt(tp / ts)],
            ["train, plain fp32 loop", f"{steps / tp:.3g} steps/s", "1"],
            ["infer-base (stage)", f"{len(test) / i_s:.3g} images/s", fmt(i_p / i_s)],
            ["infer, plain fp32 loop", f"{len(test) / i_p:.3g} images/s", "1"]]
    show("base branch: production stages vs plain fp32 loops", info, config,
         ["what", "throughput", "x plain loop (>1: faster)"], rows)
    save_json(a.json, {"machine": info, "config": config, "train": train, "infer": infer})
    return 0


if __name__ == "__main__":
    sys.exit(main())
