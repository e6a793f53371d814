"""How long the command line takes to answer: `drdc --version`, `drdc --help`, `drdc cache ls --run R` and an
option error, each in a fresh interpreter, as a ratio against `python -c "import typer, rich"` (the floor any
typer + rich command line pays).

The commands run alternating (baseline, version, help, ls, error, baseline, ...) after one warm-up each and are
reported as medians and ratios of medians, so a busy machine slows every command alike. Each command is also
run once under `python -X importtime` to say whether it imported torch or matplotlib (it should not).

    python benchmarks/bench_startup.py                         # 9 rounds; an empty run store in a temp dir
    python benchmarks/bench_startup.py --run runs/mvtec.zarr   # `cache ls` of a real run store
    python benchmarks/bench_startup.py --repo /path/to/checkout --json before.json   # another checkout's drdc
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import ROOT, alternate, fmt, machine, median, save_json, show

HEAVY = ("torch", "matplotlib")


def commands(run: Path) -> dict[str, list[str]]:
    py = [sys.executable]
    drdc = [*py, "-m", "drdc_cli"]
    return {
        "python -c 'import typer, rich'": [*py, "-c", "import typer, rich"],
        "drdc --version": [*drdc, "--version"],
        "drdc --help": [*drdc, "--help"],
        "drdc cache ls --run R": [*drdc, "cache", "ls", "--run", str(run)],
        "drdc fuse --run R --gamma 2 (error)": [*drdc, "fuse", "--run", str(run), "--gamma", "2"],
    }


def imported(cmd: list[str], env: dict) -> list[str]:
    """The heavy packages `cmd` imports, from `python -X importtime`'s report."""
    proc = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], env=env, capture_output=True, text=True)
    names = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return [m for m in HEAVY if m in names]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round (the test suite's smoke run)")
    ap.add_argument("--repeats", type=int, default=9, help="rounds of the alternation (default 9)")
    ap.add_argument("--run", type=Path, help="run store for `cache ls` (default: a new empty one)")
    ap.add_argument("--repo", type=Path, default=ROOT, help="checkout whose drdc to time (default: this one)")
    ap.add_argument("--json", help="write the timings here")
    a = ap.parse_args()
    repeats = 1 if a.quick else a.repeats
    env = {**os.environ, "PYTHONPATH": str(a.repo.resolve()), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "COLUMNS": "100"}
    with tempfile.TemporaryDirectory() as tmp:
        run = a.run
        if run is None:
            run = Path(tmp) / "empty.zarr"
            subprocess.run([sys.executable, "-c", f"from stages.store.cache import RunStore; RunStore({str(run)!r}, "
                            "create=True)"], env=env, check=True)
        cmds = commands(run)

        def call(cmd: list[str]):
            return lambda: subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          cwd=tmp)

        seconds = alternate({k: call(v) for k, v in cmds.items()}, repeats, torch.device("cpu"))
        heavy = {k: imported(v, env) for k, v in cmds.items()}
    base = next(iter(cmds))
    medians = {k: median(v) for k, v in seconds.items()}
    ratio = {k: medians[k] / medians[base] for k in cmds}
    info = {**machine(torch.device("cpu")), "repo": str(a.repo.resolve())}
    config = {"repeats": repeats, "run": str(a.run or "a new empty store"), "OMP_NUM_THREADS": env["OMP_NUM_THREADS"]}
    rows = [[k, fmt(medians[k]), fmt(ratio[k]), ", ".join(heavy[k]) or "-"] for k in cmds]
    show("start-up: seconds per command in a fresh interpreter (median), ratio to importing typer + rich", info,
         config, ["command", "median s", "ratio", "imports"], rows)
    save_json(a.json, {"machine": info, "config": config, "seconds": seconds, "median": medians, "ratio": ratio,
                       "heavy_imports": heavy, "baseline": base})


if __name__ == "__main__":
    main()
