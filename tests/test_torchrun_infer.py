"""Sharded inference under torchrun: ranks claim disjoint chunks of one entry in one store, the result is
bit-identical to a single process, and after a rank is killed the rerun computes exactly the missing chunks."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stages.store.cache import RunStore
from stages.store.claims import CHUNK

from conftest import TINY_INFER, copy_run

ROOT = Path(__file__).resolve().parents[1]
INFER = [*TINY_INFER, "--c", "1,8"]


def _torchrun(run: Path, *args: str, log: Path, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "drdc_cli", "--", args[0], "--run", str(run), "-q", *map(str, args[1:])]
    import torch

    # each rank gets the reference's thread count: CPU kernels split reductions by thread, so bits follow threads
    threads = str(torch.get_num_threads())
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "OMP_NUM_THREADS": threads, "DRDC_FAULT_LOG": str(log), **env})


def _entries(run: Path, stage: str) -> dict:
    return {e.key: e for e in RunStore(run).entries() if e.stage == stage}


def _drop(run: Path, stage: str) -> None:
    for e in _entries(run, stage).values():
        shutil.rmtree(e.path)


def _chunks_done(log: Path, site: str) -> list[str]:
    return [line.split()[2] for line in log.read_text().splitlines() if line.split()[1] == site]


@pytest.mark.slow
def test_two_ranks_share_extract_and_infer_diff_bit_identically(full_run_pristine, tmp_path):
    ref = full_run_pristine
    run = copy_run(ref, tmp_path / "r.zarr")
    _drop(run, "extract")
    _drop(run, "infer_diff")
    log = tmp_path / "points.log"

    # a chunk of extract takes a fraction of a second: one slowed to a second lets the rank the scheduler started
    # late still find its share (CI saw rank 1 take all 8 chunks before rank 0 began)
    res = _torchrun(run, "extract", "--feature-size", "8", log=log, DRDC_SLOW_AT="extract.done:1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("✓ extract") == 1  # one line, from rank 0
    n_img = RunStore(ref).current("extract").array("features").shape[0]
    ranks = _chunks_done(log, "extract.done")
    assert len(ranks) == -(-n_img // CHUNK) and set(ranks) == {"0", "1"}  # every chunk once, both ranks worked
    a, b = RunStore(ref).current("extract"), RunStore(run).current("extract")
    assert a.key == b.key and np.array_equal(a.array("features")[:], b.array("features")[:])

    log.write_text("")
    res = _torchrun(run, "infer-diff", *INFER, log=log, DRDC_SLOW_AT="infer_diff.done:1")
    assert res.returncode == 0, res.stderr[-3000:]
    n_test = RunStore(ref).current("infer_base").array("record").shape[0]
    ranks = _chunks_done(log, "infer_diff.done")
    assert len(ranks) == 2 * -(-n_test // CHUNK) and set(ranks) == {"0", "1"}  # two c entries
    for key, e in _entries(ref, "infer_diff").items():
        got = _entries(run, "infer_diff")[key]
        assert got.is_complete and np.array_equal(e.array("heatmaps")[:], got.array("heatmaps")[:])


@pytest.mark.slow
def test_killed_rank_then_rerun_computes_exactly_the_missing_chunks(full_run_pristine, tmp_path, cli):
    ref = full_run_pristine
    run = copy_run(ref, tmp_path / "r.zarr")
    _drop(run, "infer_diff")
    log = tmp_path / "points.log"
    # rank 1 dies after writing its first chunk's data, before its done flags (named: which rank writes the
    # entry's attributes first is a race)
    res = _torchrun(run, "infer-diff", *INFER, log=log, DRDC_KILL_AT="infer_diff.data:1", DRDC_KILL_RANK="1")
    assert res.returncode != 0
    # Rank 0, stopped by the agent, may have rolled back entries with no image done: an entry is there whole
    # (its done flags say what is left) or not at all (all of it is left), never half removed.
    partial = _entries(run, "infer_diff")
    assert [w for *_, w in RunStore(run).slots() if w] == []
    n_test = RunStore(ref).current("infer_base").array("record").shape[0]
    flags = {k: partial[k].array("done")[:] if k in partial and partial[k].has("done") else np.zeros(n_test, bool)
             for k in _entries(ref, "infer_diff")}
    missing = {(k, s) for k, d in flags.items() for s in range(0, n_test, CHUNK) if not d[s : s + CHUNK].all()}
    assert missing

    rerun_log = tmp_path / "rerun.log"
    os.environ["DRDC_FAULT_LOG"] = str(rerun_log)
    try:
        from stages.store import faults

        faults.reset()
        cli("infer-diff", "--run", run, *INFER)
    finally:
        del os.environ["DRDC_FAULT_LOG"]
    assert len(_chunks_done(rerun_log, "infer_diff.done")) == len(missing)
    for key, e in _entries(ref, "infer_diff").items():
        got = _entries(run, "infer_diff")[key]
        assert got.is_complete and np.array_equal(e.array("heatmaps")[:], got.array("heatmaps")[:])
