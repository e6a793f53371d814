"""Benchmark: infer-diff images/s, a naive reference loop (A) against the production path (B), side by side.

A: kept here on purpose: one UNet call per (c, i) sequence and DDIM step, batch 1, fp32, contiguous tensors, the
   same noise and masks as production (drawn from the same per-(image, c) generators in the same order).
B: the production code, ``stages.pipeline.infer_diff.image_heatmaps`` over chunks of ``stages.store.cache.CHUNK`` images (every
   (image, c, i) sequence of a chunk in one UNet batch per step), with the UNet wrapped by
   ``stages.models.unet.InferenceUNet`` when --channels-last / --bf16 / --compile are given.
B0 (only when B has options): production with the plain fp32 contiguous model, to show what the options add.

Also: FLOPs of the UNet (torch.utils.flop_counter) -> achieved GFLOP/s, against the GFLOP/s of a large matmul
measured in the same run, and the max abs difference of B's heatmaps from A's.

    python benchmarks/bench_infer_diff.py                        # cpu preset, 64 px, 2 images, 3 repeats
    python benchmarks/bench_infer_diff.py --channels-last --compile
    python benchmarks/bench_infer_diff.py --device cuda --preset paper --bf16 --channels-last --compile --images 16
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time

import numpy as np
import torch
from common import alternate, fmt, machine, matmul_peak_gflops, median, save_json, show, sync
from torch.utils.flop_counter import FlopCounterMode

from stages.data.images import to_model_space
from stages.data.synthetic import CATEGORIES, render_sample
from stages.method.diffusion import ddim_step, linear_schedule, predict_x0, q_sample
from stages.method.fusion import diff_heatmap
from stages.method.masks import grid_masks, image_generator
from stages.models.unet import ConditionalUNet, InferenceUNet, UNetConfig
from stages.pipeline.infer_diff import InferDiffParams, image_heatmaps
from stages.pipeline.train_diff import TrainDiffParams
from stages.store.claims import CHUNK
from stages.config.presets import build

# fp32 paths differ from A only by float rounding in other batch shapes / layouts; bf16 keeps ~3 significant
# digits. Heatmaps are stored as float16 (step 2e-3 at 2.0), so 1e-3 is below what the cache keeps.
TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2}
MVTEC_TEST = 1725  # MVTec AD's test images: the projection column


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def random_unet(cfg: UNetConfig, seed: int = 0) -> ConditionalUNet:
    """A UNet with random weights everywhere (the zero-initialised output layers too, or eps would be 0 and
    every path would agree trivially); std 1/sqrt(fan_in) keeps activations O(1)."""
    model = ConditionalUNet(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, q in model.named_parameters():
            if q.ndim > 1:
                q.copy_(torch.randn(q.shape, generator=g) / math.sqrt(q[0].numel()))
            elif "norm" not in name:
                q.copy_(0.02 * torch.randn(q.shape, generator=g))
    return model.eval()


def test_images(n: int, size: int) -> torch.Tensor:
    """n synthetic test images (defects included), (n, 3, size, size) in model space [-1, 1]."""
    kinds = {"weave": "scratch", "disc": "missing", "grain": "hole"}
    imgs = []
    for k in range(n):
        cat = CATEGORIES[k % len(CATEGORIES)]
        _, img, _ = render_sample(cat, size, 0, f"test/{kinds[cat]}", k)
        imgs.append(np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img)
    return to_model_space(np.stack(imgs), size)


@torch.no_grad()
def naive_heatmaps(model: ConditionalUNet, p: InferDiffParams, images: torch.Tensor, size: int,
                   dev: torch.device) -> torch.Tensor:
    """(A) The reference: per image, per c, per mask i, per step, one batch-1 UNet call.
    images (n, 3, S, S) -> heatmaps (n, n_c, n_t, n_l, S, S) float32 on the CPU."""
    s = linear_schedule()
    ts, n_draws = p.t, 2 + (len(p.t) - 1 if p.test_time_condition else 0)
    out = []
    for r in range(images.shape[0]):
        img = images[r : r + 1].to(dev)
        per_c = []
        for c in p.c:
            masks = grid_masks(size, c, p.n_s, image_generator(p.seed, r, 2 * c)).to(dev)
            g = image_generator(p.seed, r, 2 * c + 1)  # draws n0, n1, n_t' for the n_s rows, as production
            noise = [torch.randn((p.n_s, 3, size, size), generator=g).to(dev) for _ in range(n_draws)]
            x0 = {t: torch.zeros_like(img) for t in ts}
            for i in range(p.n_s):
                m = masks[i : i + 1]
                i_in = m * img + (1 - m) * noise[0][i : i + 1]  # Eq 12
                x = q_sample(i_in, ts[0], noise[1][i : i + 1], s)
                for k, t in enumerate(ts):
                    eps = model(x, i_in if model.config.model_condition else None, torch.tensor([t], device=dev))
                    x0[t] += (1 - m) * predict_x0(x, eps, t, s, clip=True)  # Eq 9, assembled as Eq 10
                    if k + 1 == len(ts):
                        break
                    xu = ddim_step(x, eps, t, ts[k + 1], s, clip=True)
                    x = (m * q_sample(img, ts[k + 1], noise[2 + k][i : i + 1], s) + (1 - m) * xu
                         if p.test_time_condition else xu)
            per_c.append(torch.stack([torch.stack([diff_heatmap(img, x0[t], l)[0] for l in p.l]) for t in ts]))
        out.append(torch.stack(per_c).cpu())
    return torch.stack(out)


@torch.inference_mode()
def production_heatmaps(model, p: InferDiffParams, images: torch.Tensor, size: int,
                        dev: torch.device) -> torch.Tensor:
    """(B) The production function over chunks of CHUNK images -> (n, n_c, n_t, n_l, S, S) float32, CPU."""
    out = []
    cs = list(p.c)
    for a in range(0, images.shape[0], CHUNK):
        x = images[a : a + CHUNK]
        maps = image_heatmaps(model, p, x, np.arange(a, a + x.shape[0]), cs, size, dev)["heatmaps"]
        out.append(torch.stack([maps[c] for c in cs], 1).float().cpu())
    return torch.cat(out)


def unet_gflops(model, cfg: UNetConfig, batch: int, size: int, dev: torch.device, repeats: int,
                run) -> tuple[float, float]:
    """(FLOPs of one sequence pass, achieved GFLOP/s of ``run`` on a production-sized batch)."""
    x = torch.randn(batch, 3, size, size, device=dev)
    cond = x.clone() if cfg.model_condition else None
    t = torch.full((batch,), 100, device=dev)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as fc:
            model(x, cond, t)
        flops = fc.get_total_flops() / batch
        secs = median(alternate({"unet": lambda: run(x, cond, t)}, repeats, dev)["unet"])
    return flops, flops * batch / secs / 1e9


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    ap.add_argument("--size", type=int, help="diffusion resolution (default: the preset's, 64 cpu / 224 paper)")
    ap.add_argument("--images", type=int, default=2, help="test images per timed run (8 fills a production chunk)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating A/B rounds (medians are reported)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--channels-last", action="store_true", help="B: NHWC weights and activations")
    ap.add_argument("--bf16", action="store_true", help="B: bfloat16 autocast (CUDA only)")
    ap.add_argument("--compile", action="store_true", help="B: torch.compile the UNet")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="a tiny UNet and short chain: a smoke run, < 20 s")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's top ops (self CPU time) "
                    "of one production call on one image")
    ap.add_argument("--json", help="also write the results to this JSON file")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device available", file=sys.stderr)
        return 2
    tp = build(TrainDiffParams, "train_diff", a.preset)
    size = a.size or tp.size
    cfg = dataclasses.replace(tp, size=size).unet_config() if size == tp.size else tp.unet_config().at_size(size)
    p = build(InferDiffParams, "infer_diff", a.preset)
    if a.quick:  # the code path end to end, on a toy: 32 px, 8 channels, 2 levels, 2 steps, 2 grid sizes
        size = 32
        cfg = UNetConfig(image_size=32, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                         attention_resolutions=(16,), num_head_channels=8)
        p = InferDiffParams(t=(50, 0), c=(1, 8), l=(1, 2), n_s=2)
        a.images, a.repeats = 2, 1
    model = random_unet(cfg).to(dev)
    images = test_images(a.images, size)
    opts = {"channels_last": a.channels_last, "bf16": a.bf16, "compile": a.compile}
    fast = InferenceUNet(random_unet(cfg).to(dev), **opts) if any(opts.values()) else model
    seqs = len(p.c) * p.n_s
    passes = seqs * len(p.t)
    info = machine(dev)
    config = {"preset": a.preset, "size": size, "images": a.images, "repeats": a.repeats, "t": list(p.t),
              "c": list(p.c), "l": list(p.l), "n_s": p.n_s, "UNet passes/image": passes,
              "UNet params": f"{sum(q.numel() for q in model.parameters()) / 1e6:.2f}M",
              "B options": ",".join(k for k, v in opts.items() if v) or "none (fp32, contiguous)"}

    fns = {"A naive": lambda: naive_heatmaps(model, p, images, size, dev),
           "B production": lambda: production_heatmaps(fast, p, images, size, dev)}
    if fast is not model:
        fns["B0 production, plain model"] = lambda: production_heatmaps(model, p, images, size, dev)
    # the equality run doubles as the warm-up (with --compile it compiles every chunk shape B will see)
    t0 = time.perf_counter()
    ref = naive_heatmaps(model, p, images, size, dev)
    out_b = production_heatmaps(fast, p, images, size, dev)
    warm_s = time.perf_counter() - t0
    diff = {"B production": float((out_b - ref).abs().max())}
    if fast is not model:
        diff["B0 production, plain model"] = float((production_heatmaps(model, p, images, size, dev) - ref)
                                                   .abs().max())
    times = alternate(fns, a.repeats, dev, warmup=False)

    chunk_batch = min(CHUNK, a.images) * seqs
    flops_seq, gf_b = unet_gflops(model, cfg, chunk_batch, size, dev, a.repeats, fast)
    _, gf_a = unet_gflops(model, cfg, 1, size, dev, a.repeats, model)
    peak = matmul_peak_gflops(dev, n=1024 if a.quick else None)
    peak_bf16 = matmul_peak_gflops(dev, torch.bfloat16) if a.bf16 else None
    flops_img = flops_seq * passes
    ref_s = median(times["A naive"])
    tol = TOLERANCE["bf16" if a.bf16 else "fp32"]
    rows = []
    for k, v in times.items():
        s_img = median(v) / a.images
        d = diff.get(k)
        rows.append([k, fmt(1 / s_img), fmt(1e3 * s_img, 4), _hours(MVTEC_TEST * s_img), fmt(ref_s / median(v)),
                     fmt(flops_img / s_img / 1e9),
                     fmt(100 * flops_img / s_img / 1e9 / peak), "-" if d is None else f"{d:.2e}",
                     "-" if d is None else ("yes" if d <= tol else "NO")])
    show("infer-diff: naive loop (A) vs production (B)", info, config,
         ["path", "images/s", "ms/image", f"{MVTEC_TEST} images", "x A", "GFLOP/s (whole path)", "% matmul peak",
          "max|H - H_A|", f"within {tol:g}"], rows)
    unet_rows = [["UNet alone, batch 1 (A's calls)", fmt(gf_a), fmt(100 * gf_a / peak)],
                 [f"UNet alone, batch {chunk_batch} (B's calls)", fmt(gf_b), fmt(100 * gf_b / peak)],
                 ["matmul 2048^2 fp32 peak" if dev.type == "cpu" else "matmul 8192^2 fp32 peak", fmt(peak), "100"]]
    if peak_bf16:
        unet_rows.append(["matmul 8192^2 bf16 peak", fmt(peak_bf16), fmt(100 * peak_bf16 / peak)])
    show(f"UNet compute: {flops_seq / 1e9:.3g} GFLOP per sequence pass, {flops_img / 1e9:.3g} GFLOP per image",
         {}, {"warm-up + equality runs (s)": f"{warm_s:.1f}"}, ["what", "GFLOP/s", "% of fp32 matmul peak"],
         unet_rows)
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            production_heatmaps(fast, p, images[:1], size, dev)
            sync(dev)
        key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=36))
    save_json(a.json, {"machine": info, "config": config, "seconds": times, "max_abs_diff": diff,
                       "flops_per_pass": flops_seq, "unet_gflops": {"A": gf_a, "B": gf_b}, "matmul_gflops": peak,
                       "matmul_bf16_gflops": peak_bf16, "tolerance": tol})
    return 0


if __name__ == "__main__":
    sys.exit(main())
