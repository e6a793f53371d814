"""Two writers, one store: shared entries split chunks between processes, exclusive ones refuse a second writer
and name the holder, and concurrent metadata updates are never lost."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from stages.store.cache import RunStore
from stages.errors import StoreError
from stages.store.locks import is_locked

from conftest import TINY_INFER, copy_run, drdc_process

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_second_writer_of_an_exclusive_entry_is_refused_with_the_holder(tmp_path):
    store = RunStore(tmp_path / "r.zarr", create=True)
    holder = _python(f"""
        import sys, time
        from stages.store.cache import RunStore
        RunStore({str(store.path)!r}).begin("score", {{"source": "x"}}, {{}})
        print("held", flush=True)
        time.sleep(60)
    """)
    assert holder.stdout.readline().strip() == "held"
    try:
        with pytest.raises(StoreError, match=rf"score .* is being written by pid {holder.pid} on "):
            store.begin("score", {"source": "x"}, {})
        e, cached = store.begin("score", {"source": "other"}, {})  # another entry of the same stage is free
        assert not cached
    finally:
        holder.kill()
        holder.wait()
    e, cached = store.begin("score", {"source": "x"}, {})  # the kernel dropped the dead holder's lock
    assert not cached and e.status == "running"


def test_concurrent_metadata_updates_are_all_kept(tmp_path):
    store = RunStore(tmp_path / "r.zarr", create=True)
    code = """
        import sys
        from stages.store.cache import RunStore
        s = RunStore({path!r})
        for i in range(15):
            s.set_attr(**{{f"w{w}_{{i}}": i}})
    """
    procs = [_python(code.format(path=str(store.path), w=w)) for w in range(4)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    store.reload()
    assert all(store.attr(f"w{w}_{i}") == i for w in range(4) for i in range(15))


@pytest.mark.slow
def test_two_infer_diff_processes_share_the_chunks(full_run_pristine, tmp_path, cli):
    """Two plain processes on one store: every chunk is computed exactly once, by one of them, and the result
    equals a single-process run."""
    ref, shared = copy_run(full_run_pristine, tmp_path / "ref.zarr"), copy_run(full_run_pristine, tmp_path / "s.zarr")
    args = [*TINY_INFER, "--c", "1,4", "--seed", "5"]
    cli("infer-diff", "--run", ref, *args)
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    import torch

    env = {"OMP_NUM_THREADS": str(torch.get_num_threads()), "TQDM_DISABLE": "1"}  # bits follow thread counts
    procs = [subprocess.Popen([sys.executable, "-m", "drdc_cli", "infer-diff", "--run", str(shared), "-q", *args],
                              cwd=ROOT, env={**os.environ, **env, "DRDC_FAULT_LOG": str(log)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for log in logs]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    done_points = [line.split()[1] for log in logs for line in log.read_text().splitlines()]
    n_chunks = -(-RunStore(ref).current("infer_base").array("record").shape[0] // 8)
    assert done_points.count("infer_diff.done") == 2 * n_chunks  # two c entries, each chunk flagged once
    for c in (1, 4):
        a = next(e for e in RunStore(ref).entries() if e.stage == "infer_diff" and e.params["c"] == c and e.params["seed"] == 5)
        b = RunStore(shared).get("infer_diff", a.key)
        assert b is not None and b.is_complete
        assert np.array_equal(a.array("heatmaps")[:], b.array("heatmaps")[:])


@pytest.mark.slow
def test_cli_names_the_running_trainer_and_ctrl_c_says_what_is_saved(full_run_pristine, tmp_path, cli):
    from conftest import TINY_TRAIN, options

    run = copy_run(full_run_pristine, tmp_path / "r.zarr")
    train = options(TINY_TRAIN, "--epochs", "5000", "--seed", "9")  # never finishes before the SIGINT, even on a busy machine
    proc = drdc_process("train-base", "--run", run, "-q", *train, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 180
        while not any(is_locked(p) for p in run.glob("train_base/*/.lock")) and time.time() < deadline:
            time.sleep(0.05)
        res = cli("train-base", "--run", run, *train, code=1)
        assert f"is being written by pid {proc.pid}" in res.output and "train-base" in res.output
        assert "Traceback" not in res.output
        ls = cli("cache", "ls", "--run", run)
        assert "running" in ls.output
        while time.time() < deadline and not any(e.attrs.get("history") for e in RunStore(run).entries()
                                                   if e.stage == "train_base" and not e.is_complete):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        msg = proc.stderr.read().strip()
        assert len(msg.splitlines()) == 1 and "Traceback" not in msg, msg
        assert re.search(r"interrupted: saved train-base \w+: \d+ epochs checkpointed; rerun `drdc train-base "
                         r"--run .* to resume", msg), msg
    finally:
        proc.kill()
        proc.wait()
