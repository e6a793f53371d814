"""Shared pieces of the benchmark scripts: machine description, side-by-side A/B timing, matmul peak, tables.

Timings on a shared machine are noisy, so every ratio is measured in one process, alternating A and B
(A, B, A, B, ...) after one warm-up call each, and reported as the ratio of the medians.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere: the repo's packages first
    sys.path.insert(0, str(ROOT))

console = Console(width=120)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, str]:
    """What the numbers were measured on."""
    info = {"cpu": cpu_model(), "cores": str(os.cpu_count()), "torch threads": str(torch.get_num_threads()),
            "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
              warmup: bool = True) -> dict[str, list[float]]:
    """Seconds per call of each fn, called in turn (A, B, ..., A, B, ...) ``repeats`` times after one warm-up."""
    if warmup:
        for fn in fns.values():
            fn()
            sync(device)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            out[k].append(time.perf_counter() - t0)
    return out


def median(v: list[float]) -> float:
    return statistics.median(v)


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None,
                       repeats: int = 5) -> float:
    """Achieved GFLOP/s of an n x n matmul (2 n^3 flops), the median of ``repeats`` calls: the machine's
    practical dense-compute ceiling for this dtype, measured in the same run as the model."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = alternate({"mm": lambda: a @ b}, repeats, device)["mm"]
    return 2 * n**3 / median(times) / 1e9


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def show(title: str, info: dict[str, str], config: dict[str, object], columns: list[str],
         rows: list[list[object]]) -> None:
    """Print the machine, the config and the result table."""
    console.print(f"[bold]{title}[/bold]")
    console.print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    console.print("config:  " + ", ".join(f"{k}={v}" for k, v in config.items()))
    t = Table(show_lines=False)
    for c in columns:
        t.add_column(c, justify="left" if c == columns[0] else "right")
    for r in rows:
        t.add_row(*[str(v) for v in r])
    console.print(t)


def save_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=1, default=str))
        console.print(f"wrote {path}")


def fmt(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}g}"
