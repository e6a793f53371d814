"""How long `drdc demo` takes, from nothing, and where the time goes: the figure the README's quick start states.

    python benchmarks/bench_demo.py                  # the demo's defaults, in a new temp folder (about 10 minutes)
    python benchmarks/bench_demo.py --out DIR        # keep the demo's folder (its pictures, its run store)
    python benchmarks/bench_demo.py --quick          # a tiny demo (64 px, 2 diffusion steps): the suite's smoke run

Runs `drdc demo` once in a subprocess (a fresh interpreter, as a user types it) and reports its wall time, the
peak resident memory of the process, and each stage's own time as the demo prints it ("done in X s"). One run,
not alternated: the demo is minutes long, so time it on an otherwise idle machine and say so (the table prints
the load average before and after).
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, machine, save_json, show

QUICK = ["--size", "64", "--epochs", "1", "--diff-steps", "2", "--n-train", "12", "--n-test-good", "2",
         "--n-test-defect", "3"]  # tests/test_cli.py's demo reruns these and checks that all is cached
STAGE_LINE = re.compile(r"✓ (?P<stage>[\w-]+) [0-9a-f,]+ done in (?P<s>[\d.]+) s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny demo (the test suite's smoke run)")
    ap.add_argument("--out", type=Path, help="the demo's folder (default: a temp folder, removed after)")
    ap.add_argument("--json", help="write the timings here")
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or Path(tmp) / "demo"
        cmd = [sys.executable, "-m", "drdc_cli", "demo", "--out", str(out), *(QUICK if a.quick else [])]
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        load1 = os.getloadavg()
        if proc.returncode:
            sys.exit(f"drdc demo failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        stages: dict[str, float] = {}
        for m in STAGE_LINE.finditer(proc.stdout):
            stages[m["stage"]] = stages.get(m["stage"], 0.0) + float(m["s"])
        pictures = len(list((out / "pictures").glob("*.png")))
    rows = [[name, f"{s:.1f}", f"{100 * s / wall:.0f} %"] for name, s in stages.items()]
    rows.append(["demo, wall (incl. data, start-up, pictures)", f"{wall:.1f}", "100 %"])
    show("drdc demo from nothing", machine(torch.device("cpu")),
         {"args": " ".join(cmd[3:]), "load average before/after": f"{load0[0]:.2f}/{load1[0]:.2f}",
          "peak RSS MiB": f"{peak:.0f}", "pictures": pictures},
         ["stage", "seconds", "share"], rows)
    save_json(a.json, {"wall_s": wall, "peak_rss_mb": peak, "stages_s": stages, "pictures": pictures,
                       "load_before": load0, "load_after": load1, "args": cmd[3:]})


if __name__ == "__main__":
    main()
