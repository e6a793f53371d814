"""`drdc cache verify` finds what is wrong in complete entries; `drdc cache gc` removes only what it is asked to,
and never an entry another process is writing."""
from __future__ import annotations

import numpy as np

from stages.cache import RunStore


def test_a_sound_store_verifies(full_run, cli):
    res = cli("cache", "verify", "--run", full_run)
    assert "every complete entry verified" in res.output


def test_verify_names_nan_missing_flags_and_broken_checkpoints(full_run, cli):
    store = RunStore(full_run)
    fuse, ib, tb = store.current("fuse"), store.current("infer_base"), store.current("train_base")
    maps = fuse.array("maps")
    maps[0] = np.full(maps.shape[1:], np.nan, np.float32)
    ib.array("done")[1] = 0
    (tb.files / "model.pt").write_bytes(b"garbage")
    res = cli("cache", "verify", "--run", full_run, code=1)
    out = " ".join(res.output.split())
    assert "array maps holds" in out and "NaN/inf" in out
    assert "complete but 1/" in out and "done flags are off" in out
    assert "model.pt does not load" in out
    assert "3 entries of" in res.stderr and "failed verification" in res.stderr


def test_gc_partial_stale_and_by_key(full_run, cli):
    store = RunStore(full_run)
    e, _ = store.begin("infer_base", {"abandoned": True}, {"x": "y"}, exclusive=False)
    e.require_done(10)[:3] = 1
    store.reload()
    n_before = len(list(store.entries()))
    res = cli("cache", "gc", "--run", full_run, "--partial", "--dry-run")
    assert f"would remove infer-base {e.key}" in res.output and len(list(RunStore(full_run).entries())) == n_before
    cli("cache", "gc", "--run", full_run, "--partial")
    assert RunStore(full_run).get("infer_base", e.key) is None
    # the base score is not what the current score entry uses (that is the fused one): stale
    stale = [x for x in RunStore(full_run).entries() if x.stage == "score" and x.params["source"] == "base"]
    assert stale
    cli("cache", "gc", "--run", full_run, "--stale")
    keys = {x.key for x in RunStore(full_run).entries()}
    assert stale[0].key not in keys
    assert RunStore(full_run).current("score").key in keys  # everything current survives, with its inputs
    cli("cache", "verify", "--run", full_run)
    fuse = RunStore(full_run).current("fuse").key
    cli("cache", "gc", "--run", full_run, "--key", fuse[:6])
    assert RunStore(full_run).get("fuse", fuse) is None
    res = cli("cache", "gc", "--run", full_run, code=2)
    assert "say what to remove" in res.output


def test_gc_never_removes_an_entry_being_written(full_run, cli):
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import time
        from stages.cache import RunStore
        RunStore({str(full_run)!r}).begin("train_base", {{"busy": 1}}, {{}})
        print("held", flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        cli("cache", "gc", "--run", full_run, "--partial")
        busy = [x for x in RunStore(full_run).entries() if x.params.get("busy")]
        assert busy and busy[0].is_busy()
        assert "running" in cli("cache", "ls", "--run", full_run).output
        res = cli("cache", "gc", "--run", full_run, "--key", busy[0].key, code=2)
        assert "is being written by another process" in res.output
    finally:
        p.kill()
        p.wait()
