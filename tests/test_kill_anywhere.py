"""Kill anywhere, resume exactly: every stage is SIGKILLed at seeded random save points and rerun; the result
must be bit-identical to an uninterrupted run, and nothing half-written may be read back as a result meanwhile.

Save points (stages/store/faults.py) sit between an array chunk and its done flags, after done flags, after attribute
updates, between a checkpoint's temp file and its rename, and after completion. The reference run counts the
points each stage reaches; the kill runs pick among them with a seeded generator. DRDC_KILL_POINTS
sets how many points per stage (default 1, to keep the suite under 10 minutes; 2 or more for a thorough run).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.store import faults
from stages.store.cache import RunStore
from stages.errors import CacheMissError
from stages.data.synthetic import SyntheticSpec, make_dataset

from conftest import TINY_EXTRACT, TINY_INDEX, TINY_TRAIN, copy_run

# 36 test images (5 chunks) and 60 images to extract (8 chunks): room to die between chunks.
SPEC = SyntheticSpec(size=64, n_train=8, n_test_good=6, n_test_defect=6)
DIFF = ["--size", "32", "--model-channels", "8", "--channel-mult", "1,2", "--res-blocks", "1", "--attention", "16",
        "--head-channels", "8", "--steps", "6", "--batch-size", "4", "--grid", "1,4,8", "--ckpt-every", "2"]
TRAIN = [a if a != "2" else "4" for a in TINY_TRAIN[:2]] + TINY_TRAIN[2:]  # 4 epochs
PIPELINE = [
    ("index", TINY_INDEX), ("extract", TINY_EXTRACT), ("train-base", TRAIN), ("infer-base", []),
    ("train-diff", DIFF), ("infer-diff", ["--t", "100,50,0", "--l", "1,2", "--c", "1,8"]),
    ("fuse", ["--c", "1,8"]), ("score", ["--source", "fuse"]),
]
POINTS = int(os.environ.get("DRDC_KILL_POINTS", "1"))  # CI: one seeded point per stage; more: DRDC_KILL_POINTS=4


def _stage(cmd: str) -> str:
    return cmd.replace("-", "_")


def _result(run: Path, cmd: str) -> dict[str, np.ndarray]:
    """Every array of the stage's complete entries (infer-diff has one per c), and their final weights."""
    store = RunStore(run)
    store.current(_stage(cmd))  # fresh and complete
    out = {}
    for e in store.entries():
        if e.stage != _stage(cmd) or not e.is_complete:
            continue
        out.update({f"{e.key}:{name}": a[:] for name, a in e.group.arrays()})
        if (e.files / "model.pt").exists():
            for k, v in torch.load(e.files / "model.pt", weights_only=True).items():
                out[f"{e.key}:model.pt:{k}"] = v.numpy()
            # the file itself, byte for byte: a resumed checkpoint is the uninterrupted one's file
            out[f"{e.key}:model.pt bytes"] = np.frombuffer((e.files / "model.pt").read_bytes(), np.uint8)
        if "metrics" in e.attrs:
            out[f"{e.key}:metrics"] = np.array(repr(e.attrs["metrics"]))
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted pipeline, with a snapshot of the store before each stage and its save-point count."""
    from typer.testing import CliRunner

    from drdc_cli.app import app, register_commands

    register_commands()
    base = tmp_path_factory.mktemp("kill")
    data = make_dataset(base / "data", SPEC)
    run = base / "ref.zarr"
    snapshots, counts, results = {}, {}, {}
    log = base / "points.log"
    old = os.environ.get("DRDC_FAULT_LOG")
    os.environ["DRDC_FAULT_LOG"] = str(log)
    try:
        for cmd, args in PIPELINE:
            if run.exists():
                snapshots[cmd] = copy_run(run, base / f"before-{cmd}.zarr")
            faults.reset()
            log.write_text("")
            extra = ["--data", data] if cmd == "index" else []
            res = CliRunner().invoke(app, [str(a) for a in [cmd, "--run", run, *extra, *args]])
            assert res.exit_code == 0, res.output
            counts[cmd] = len(log.read_text().splitlines())
            results[cmd] = _result(run, cmd)
    finally:
        os.environ.pop("DRDC_FAULT_LOG") if old is None else os.environ.__setitem__("DRDC_FAULT_LOG", old)
        faults.reset()
    return data, base, snapshots, counts, results


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [c for c, _ in PIPELINE])
def test_killed_anywhere_resumes_bit_identical(reference, cmd, cli, tmp_path):
    data, base, snapshots, counts, results = reference
    args = dict(PIPELINE)[cmd]
    extra = ["--data", str(data)] if cmd == "index" else []
    n = counts[cmd]
    assert n >= 2, f"{cmd} reached only {n} save points"
    rng = np.random.default_rng(sum(map(ord, cmd)))
    for k in sorted(rng.choice(np.arange(1, n + 1), size=min(POINTS, n), replace=False)):
        run = tmp_path / f"k{k}.zarr"
        if cmd in snapshots:
            copy_run(snapshots[cmd], run)
        # the same thread count as the reference: CPU kernels split reductions by thread, so bits follow threads
        env = {**os.environ, "DRDC_KILL_AT": str(k), "OMP_NUM_THREADS": str(torch.get_num_threads()),
               "TQDM_DISABLE": "1"}
        env.pop("DRDC_FAULT_LOG", None)
        proc = subprocess.run([sys.executable, "-m", "drdc_cli", cmd, "--run", str(run), "-q", *extra, *map(str, args)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == -9, f"{cmd} was not killed at point {k}/{n}: {proc.returncode} {proc.stderr[-2000:]}"
        if (run / "zarr.json").exists():  # half-written is never a result: every complete entry is sound
            cli("cache", "verify", "--run", run)
            if k == 1:
                with pytest.raises(CacheMissError):
                    RunStore(run).current(_stage(cmd))
        res = cli(cmd, "--run", run, *extra, *args)
        assert "✓" in res.output
        got = _result(run, cmd)
        want = results[cmd]
        assert got.keys() == want.keys(), f"{cmd} killed at {k}/{n}"
        for name in want:
            assert np.array_equal(got[name], want[name]), f"{cmd} killed at {k}/{n}: {name} differs"
        cli("cache", "verify", "--run", run)
