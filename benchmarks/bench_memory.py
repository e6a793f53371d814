"""Benchmark: peak memory of infer-diff over a few vs many test images; streaming means it must not grow with n.

Two run stores are built in a temp dir (synthetic data, index, train-diff with 1 step): one with --small test
images, one with --large. Each infer-diff run happens in a fresh child process (peak RSS is per process), which
reports its RSS before the stage, its peak RSS (ru_maxrss) and, on CUDA, torch.cuda.max_memory_allocated.
Without streaming, 100 images at 64 px with 3 c x 6 t x 4 l maps would hold ~120 MB of float32 heatmaps.

    python benchmarks/bench_memory.py                   # 10 vs 100 images, 64 px, a narrow UNet, the full t/c/l
    python benchmarks/bench_memory.py --device cuda --channels 128
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine, peak_rss_mb, save_json, show
from runstore import StoreSpec, build

from stages.pipeline import infer_diff
from stages.pipeline.infer_diff import InferDiffParams
from stages.pipeline.train_diff import TrainDiffParams
from stages.store.cache import RunStore

TOLERANCE_MB = 16.0  # allowed peak-RSS growth from the small to the large run (allocator noise, zarr metadata)


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(run: str, device: str, params: str) -> None:
    """Run infer-diff on ``run`` in this process and print one JSON line of memory numbers."""
    store = RunStore(run)
    p = InferDiffParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(params).items()})
    dev = torch.device(device)
    before = current_rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    infer_diff.run(store, p, device=device, progress=False)
    out = {"rss_before_mb": before, "peak_rss_mb": peak_rss_mb(), "seconds": time.perf_counter() - t0,
           "gpu_peak_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None}
    print("RESULT " + json.dumps(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=10)
    ap.add_argument("--large", type=int, default=100)
    ap.add_argument("--size", type=int, default=64, help="image and diffusion size")
    ap.add_argument("--channels", type=int, default=8, help="UNet model channels (memory of the maps does not "
                    "depend on it; time does)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="8 vs 16 images, 32 px, 2 steps: a smoke run")
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=3, metavar=("RUN", "DEVICE", "PARAMS"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(*a.child)
        return 0
    diff = TrainDiffParams(size=a.size, model_channels=a.channels, channel_mult=(1, 2, 2), num_res_blocks=1,
                           attention_resolutions=(a.size // 4,), num_head_channels=a.channels * 2, grid=(1, 4, 8))
    inf = InferDiffParams(c=(1, 4, 8))
    if a.quick:
        a.small, a.large, a.size = 8, 16, 32  # >= one full chunk each: the batch sets the working set
        diff = TrainDiffParams(size=32, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                               attention_resolutions=(16,), num_head_channels=8, grid=(1, 8))
        inf = InferDiffParams(t=(50, 0), c=(1, 8), l=(1, 2))
    params = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in vars(inf).items()})
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="drdc-bench-mem-") as tmp:
        for n in (a.small, a.large):
            spec = StoreSpec(image_size=a.size, n_test=n, n_train=2, categories=("weave",), diff=diff, infer=inf,
                             base=False)
            store = build(Path(tmp) / f"n{n}", spec, infer=False)
            proc = subprocess.run([sys.executable, __file__, "--child", str(store.path), a.device, params],
                                  capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                print(proc.stdout + proc.stderr, file=sys.stderr)
                return 1
            r = results[n] = json.loads(line[0][7:])
            rows.append([n, f"{r['seconds']:.1f}", f"{r['rss_before_mb']:.0f}", f"{r['peak_rss_mb']:.0f}",
                         f"{r['peak_rss_mb'] - r['rss_before_mb']:.0f}",
                         "-" if r["gpu_peak_mb"] is None else f"{r['gpu_peak_mb']:.0f}"])
    small, large = results[a.small], results[a.large]
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    maps_mb = a.large * len(inf.c) * len(inf.t) * len(inf.l) * a.size**2 * 4 / 2**20
    config = {"images": f"{a.small} vs {a.large}", "size": a.size, "UNet channels": a.channels, "t": list(inf.t),
              "c": list(inf.c), "l": list(inf.l), f"float32 maps of {a.large} images": f"{maps_mb:.0f} MB"}
    rows.append(["peak growth", "-", "-", f"{growth:+.0f}", "-", "-" if small["gpu_peak_mb"] is None else
                 f"{large['gpu_peak_mb'] - small['gpu_peak_mb']:+.0f}"])
    rows.append([f"flat (growth <= {TOLERANCE_MB:g} MB)", "-", "-", "yes" if growth <= TOLERANCE_MB else "NO",
                 "-", "-"])
    show("infer-diff peak memory vs number of images (fresh process each)", machine(torch.device(a.device)),
         config, ["images", "seconds", "RSS before (MB)", "peak RSS (MB)", "peak - before (MB)", "GPU peak (MB)"],
         rows)
    save_json(a.json, {"config": config, "results": results, "growth_mb": growth})
    return 0


if __name__ == "__main__":
    sys.exit(main())
