"""Benchmark: fuse + score from the cache against infer-diff, per image; fuse's read throughput against a plain read.

Real run stores are built in a temp dir, one per --images size (synthetic data, every stage through its production
function, the preset's UNet shape and t / c / l lists). Then, alternating, each repeat times:
  infer-diff   stages.pipeline.infer_diff.run on every test image of the smallest store (a new seed each repeat,
               so nothing is cached)
  fuse+score   stages.pipeline.fuse.run + stages.pipeline.score.run (source fuse) on each store (a new gamma each
               repeat: a new entry)
  plain read   the same zarr arrays fuse reads (heatmaps of every c, h_base), chunk by chunk, into numpy
fuse+score has a fixed cost per run (the store's metadata, locks and entry bookkeeping, ~0.2 s) besides its cost
per image; two store sizes separate the two (a straight line through the two timings), and a dataset of n images
costs fixed / n + per image. fuse's MB/s counts the bytes of the maps it reads (float16 heatmaps + float32 h_base).

    python benchmarks/bench_fuse.py                    # cpu preset, 224 px images, 64 px diffusion, 12 and 48 images
    python benchmarks/bench_fuse.py --images 12,120 --repeats 3
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import alternate, fmt, machine, median, save_json, show
from runstore import StoreSpec, build, n_test

from stages.pipeline import fuse, infer_diff, score
from stages.pipeline.infer_diff import InferDiffParams
from stages.pipeline.selection import FuseParams, diff_entries
from stages.pipeline.train_diff import TrainDiffParams
from stages.store.cache import RunStore
from stages.store.claims import CHUNK
from stages.config.presets import build as preset_build


def plain_read(store: RunStore, diffs: dict) -> int:
    """Read what fuse reads (every chunk of every c's heatmaps, and h_base) into numpy; returns the bytes."""
    base = store.current("infer_base").array("h_base")
    arrays = [e.array("heatmaps") for e in diffs.values()]
    n, total = base.shape[0], 0
    for a in range(0, n, CHUNK):
        total += np.asarray(base[a : a + CHUNK]).nbytes
        for arr in arrays:
            total += np.asarray(arr[a : a + CHUNK]).nbytes
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    ap.add_argument("--images", default="12,48", help="test images of each run store (the smallest also times "
                    "infer-diff)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating infer-diff / fuse+score rounds")
    ap.add_argument("--reads", type=int, default=5, help="fuse / plain-read pairs per repeat (they are fast)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--quick", action="store_true", help="toy sizes: a smoke run, < 20 s")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    diff = preset_build(TrainDiffParams, "train_diff", a.preset)
    inf = preset_build(InferDiffParams, "infer_diff", a.preset)
    sizes = sorted({int(v) for v in a.images.split(",")})
    specs = [StoreSpec(image_size=224, n_test=n, diff=diff, infer=inf) for n in sizes]
    if a.quick:
        diff = TrainDiffParams(size=32, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                               attention_resolutions=(16,), num_head_channels=8, grid=(1, 8))
        inf = InferDiffParams(t=(50, 0), c=(1, 8), l=(1, 2))
        specs = [StoreSpec(image_size=64, n_test=n, feature_size=8, categories=("weave",), diff=diff, infer=inf)
                 for n in (4, 8)]
        a.repeats, a.reads = 1, 2
    fp = FuseParams(t=inf.t, c=inf.c, l=inf.l, n_s=inf.n_s, seed=inf.seed)
    rounds = {"k": 0}

    def fuse_of(store: RunStore):
        def run() -> None:
            rounds["k"] += 1
            fuse.run(store, dataclasses.replace(fp, gamma=0.9 - 1e-6 * rounds["k"]), progress=False)
        return run

    def fuse_score_of(store: RunStore):
        def run() -> None:
            fuse_of(store)()
            score.run(store, score.ScoreParams(source="fuse"), progress=False)
        return run

    with tempfile.TemporaryDirectory(prefix="drdc-bench-fuse-") as tmp:
        t0 = time.perf_counter()
        stores = [build(Path(tmp) / f"s{k}", spec) for k, spec in enumerate(specs)]
        build_s = time.perf_counter() - t0
        ns = [n_test(st) for st in stores]
        small, big = stores[0], stores[-1]

        def run_diff() -> None:
            rounds["k"] += 1
            infer_diff.run(small, dataclasses.replace(inf, seed=1000 + rounds["k"]), device="cpu", progress=False)

        diffs = diff_entries(big, fp)
        nbytes = plain_read(big, diffs)
        heavy = alternate({"infer-diff": run_diff, **{f"fuse+score@{n}": fuse_score_of(st)
                                                      for n, st in zip(ns, stores)}},
                          a.repeats, torch.device("cpu"), warmup=False)
        light = alternate({"fuse": fuse_of(big), "plain read": lambda: plain_read(big, diffs)},
                          a.repeats * a.reads, torch.device("cpu"))
    d_img = median(heavy["infer-diff"]) / ns[0]
    fs = [median(heavy[f"fuse+score@{n}"]) for n in ns]
    info = machine(torch.device("cpu"))
    config = {"preset": a.preset, "test images": ",".join(map(str, ns)), "image size": specs[0].image_size,
              "diffusion size": diff.size, "t": list(inf.t), "c": list(inf.c), "l": list(inf.l),
              "maps read/image": f"{nbytes / ns[-1] / 2**10:.0f} KiB", "repeats": a.repeats,
              "store builds (s)": f"{build_s:.0f}"}
    rows = [[f"infer-diff (stage, {ns[0]} images)", fmt(1e3 * d_img, 4), "1", "-"]]
    rows += [[f"fuse+score (stages, {n} images)", fmt(1e3 * t / n, 4), fmt(d_img * n / t), "-"]
             for n, t in zip(ns, fs)]
    fixed = per_image = None
    if len(ns) > 1:  # fuse+score(n) = fixed + n * per_image, through the smallest and largest store
        per_image = (fs[-1] - fs[0]) / (ns[-1] - ns[0])
        fixed = fs[0] - per_image * ns[0]
        rows += [["fuse+score, each further image", fmt(1e3 * per_image, 4),
                  fmt(d_img / per_image) if per_image > 0 else "-", "-"],
                 ["fuse+score, fixed cost per run", f"{1e3 * fixed:.0f} ms/run", "-", "-"]]
    f_mbs = nbytes / median(light["fuse"]) / 2**20
    r_mbs = nbytes / median(light["plain read"]) / 2**20
    rows += [[f"fuse (stage, {ns[-1]} images)", fmt(1e3 * median(light["fuse"]) / ns[-1], 4),
              fmt(d_img * ns[-1] / median(light["fuse"])), f"{f_mbs:.0f} ({100 * f_mbs / r_mbs:.0f}% of plain read)"],
             ["plain read of the same arrays", fmt(1e3 * median(light["plain read"]) / ns[-1], 4), "-",
              f"{r_mbs:.0f}"]]
    show("fuse + score from the cache vs infer-diff", info, config,
         ["what", "ms/image", "x cheaper than infer-diff", "MB/s of maps read"], rows)
    save_json(a.json, {"machine": info, "config": config, "heavy": heavy, "light": light, "bytes": nbytes,
                       "images": ns, "fixed_s": fixed, "per_image_s": per_image, "infer_diff_s_per_image": d_img})
    return 0


if __name__ == "__main__":
    sys.exit(main())
