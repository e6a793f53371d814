"""`drdc cache verify` finds what is wrong in complete entries; `drdc cache gc` removes only what it is asked to,
and never an entry another process is writing."""
from __future__ import annotations

import numpy as np
import pytest

from stages.store.cache import RunStore

from conftest import TINY_TRAIN


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
    (tb.files / "config.json").write_text("{")
    res = cli("cache", "verify", "--run", full_run, code=1)
    out = " ".join(res.output.split())
    assert "config.json is not valid JSON" in out
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
        from stages.store.cache import RunStore
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


DAMAGE = {
    "corrupt chunk": lambda s: next(p for p in (s.current("infer_base").path / "h_base" / "c").rglob("*")
                                    if p.is_file()).write_bytes(b"\x28\xb5\x2f\xfd" + bytes(range(64))),
    "attrs JSON": lambda s: (s.current("fuse").path / "zarr.json").write_text("{not json"),
    "deleted model.pt": lambda s: (s.current("train_base").files / "model.pt").unlink(),
    "garbage checkpoint": lambda s: (s.current("train_diff").files / "model.pt").write_bytes(b"garbage"),
    "array metadata": lambda s: (s.current("score").path / "scores" / "zarr.json").write_text("[]"),  # array meta
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_kind_of_damage_is_one_row_and_repair_leads_back_to_a_good_store(damage, full_run, cli):
    """Damage one file; verify reports it (one row, no traceback) and the others, --repair removes the damaged
    entry and prints the commands; running them gives a store that verifies."""
    import shlex

    before = RunStore(full_run).current_keys
    DAMAGE[damage](RunStore(full_run))
    res = cli("cache", "verify", "--run", full_run, code=1)
    assert "Traceback" not in res.output and "failed verification" in res.stderr and "--repair" in res.stderr
    out = " ".join(res.output.split())
    assert out.count(" ok ") >= 3  # the sound entries are still listed
    rep = cli("cache", "verify", "--run", full_run, "--repair")
    cmds = [ln.strip() for ln in rep.output.splitlines() if ln.strip().startswith("drdc ")]
    assert cmds, rep.output
    for line in cmds:  # the removed results, in pipeline order, each with the options it was made with
        cli(*shlex.split(line)[1:], "-q")
    cli("cache", "verify", "--run", full_run)
    assert RunStore(full_run).current_keys == before, "the printed commands made other results than the removed"


def test_a_deleted_checkpoint_makes_the_entry_resumable_and_the_rerun_restores_it(full_run, cli):
    s = RunStore(full_run)
    tb = s.current("train_base")
    (tb.files / "model.pt").unlink()
    assert not RunStore(full_run).get("train_base", tb.key).is_complete
    res = cli("train-base", "--run", full_run, *TINY_TRAIN)
    assert "cached" not in res.output.split("\n")[-2]
    assert (tb.files / "model.pt").is_file() and RunStore(full_run).get("train_base", tb.key).is_complete


def test_garbage_in_locks_and_claims_is_harmless(full_run, cli):
    """Lock and claim files only say who holds them: garbage there reads as 'nobody', verify passes and the
    stages run."""
    s = RunStore(full_run)
    (s.path / ".drdc.lock").write_bytes(b"\xff\x00garbage")
    for e in s.entries():
        for f in (e.path / "claims").glob("*.lock") if (e.path / "claims").is_dir() else []:
            f.write_bytes(b"{{{")
    cli("cache", "verify", "--run", full_run)
    cli("fuse", "--run", full_run, "--c", "1,8", "--gamma", "0.5", "-q")


def test_listing_a_store_says_nothing_of_its_non_zarr_files(full_run):
    """files/, claims/ and .lock sit beside the arrays by design: listing entries and verifying them prints no
    zarr warning about them (the filter is local to the listing, not set for the whole process)."""
    import warnings

    from stages.store.verify import verify

    store = RunStore(full_run)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert list(store.entries()) and all(f.ok for f in verify(store))
    assert not [w for w in seen if "not recognized as a component" in str(w.message)]
