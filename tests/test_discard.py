"""Removing an entry (roll-back, `cache gc`, `cache verify --repair`) never leaves a damaged entry behind, even
when the process is killed halfway through deleting it; `cache gc --partial` sweeps what such a kill left."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from stages.store.cache import RunStore

ROOT = Path(__file__).resolve().parents[1]


def _entry_with_arrays(run: Path) -> Path:
    s = RunStore(run, create=True)
    e, _ = s.begin("extract", {"p": 1}, {})
    for name in ("features", "record", "done"):  # several folders, so a kill can fall between them
        e.require_array(name, (16, 4), "float32")[:] = np.ones((16, 4), np.float32)
    return e.path


def test_a_kill_while_removing_leaves_no_half_entry(tmp_path, cli):
    run = tmp_path / "r.zarr"
    path = _entry_with_arrays(run)
    # delete one file of the entry, then die as SIGKILL would (no clean-up runs)
    script = textwrap.dedent(f"""
        import os, shutil, signal
        from pathlib import Path
        from stages.store.discard import discard

        def dying_rmtree(p, ignore_errors=False):
            next(f for f in Path(p).rglob("*") if f.is_file()).unlink()
            os.kill(os.getpid(), signal.SIGKILL)

        shutil.rmtree = dying_rmtree
        discard(Path({str(path)!r}))
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == -9, res.stderr
    assert not path.exists()  # renamed away in one step before any file went
    assert [(stage, key, why) for stage, key, _, why in RunStore(run).slots()] == []
    left = list(path.parent.glob(".removing-*"))
    assert len(left) == 1

    res = cli("cache", "gc", "--run", run, "--partial", "--dry-run")
    assert "would remove extract .removing-" in res.output and left[0].exists()
    res = cli("cache", "gc", "--run", run, "--partial")
    assert "an interrupted removal" in res.output and "in 1 entries" in res.output
    assert not left[0].exists()


def test_discard_removes_an_entry_whole(tmp_path):
    from stages.store.discard import discard

    run = tmp_path / "r.zarr"
    path = _entry_with_arrays(run)
    discard(path)
    assert not path.exists() and [p for p in path.parent.iterdir() if p.is_dir()] == []  # no hidden leftover
    discard(path)  # already gone: nothing to do
