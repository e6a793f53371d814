"""train-diff --steps N continues the longest shorter run of equal settings and ends where a run from scratch ends."""
from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch

from stages.store.cache import RunStore

from conftest import TINY_DIFF, TINY_INDEX, TINY_TRAIN, drdc_process, options



def _entry(run, steps: int):
    return next(e for e in RunStore(run).entries() if e.stage == "train_diff" and e.params["steps"] == steps)


def _weights(run, steps: int) -> dict:
    return torch.load(_entry(run, steps).files / "model.pt", weights_only=True)


def test_longer_training_continues_a_shorter_one_bit_identically(tiny_data, tmp_path, cli):
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    for run in (a, b):
        cli("index", "--run", run, "--data", tiny_data, *TINY_INDEX, "-q")
    cli("train-diff", "--run", a, *options(TINY_DIFF, "--steps", "2"), "-q")
    cli("train-diff", "--run", a, *options(TINY_DIFF, "--steps", "3", "--lr", "3e-4"), "-q")  # other settings
    res = cli("train-diff", "--run", a, *options(TINY_DIFF, "--steps", "5"), "-q")
    cli("train-diff", "--run", b, *options(TINY_DIFF, "--steps", "5"), "-q")  # from scratch
    longer = _entry(a, 5)
    assert longer.attrs["extends"] == {"key": _entry(a, 2).key, "steps": 2}, res.output
    assert longer.key == _entry(b, 5).key  # the same settings, the same key
    wa, wb = _weights(a, 5), _weights(b, 5)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], _weights(a, 2)[k]) for k in wa)  # it did train on
    assert (_entry(a, 2).files / "last.pt").is_file()  # the shorter run keeps its checkpoint
    assert "extends" not in _entry(b, 5).attrs


def test_zero_epochs_is_the_seeded_initialisation(full_run, cli):
    """train-base --epochs 0: the model train-base starts from (seeded weights, the fit images' statistics)."""
    from stages.models.reconstruction import ReconstructionConfig, UniADReconstruction
    from stages.pipeline.runtime import seed_everything

    res = cli("train-base", "--run", full_run, *options(TINY_TRAIN, "--epochs", "0", "--standardize"), "-q")
    e = next(e for e in RunStore(full_run).entries() if e.stage == "train_base" and e.params["epochs"] == 0)
    assert "0 epochs" in res.output and e.attrs["history"] == []
    saved = torch.load(e.files / "model.pt", weights_only=True)
    cfg = ReconstructionConfig(**{k: v for k, v in __import__("json").loads((e.files / "config.json").read_text()).items()})
    seed_everything(0)
    fresh = UniADReconstruction(cfg)
    assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items() if not k.startswith("feat_"))
    cli("infer-base", "--run", full_run, "--residual-norm", "mahalanobis", "-q")  # the base map follows


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143)])  # SIGINT takes the same path (StepBoundary)
def test_train_diff_stopped_between_checkpoints_saves_the_step_it_was_in(tiny_data, tmp_path, cli, sig, code):
    """Ctrl-C or SIGTERM between checkpoints: the step in progress ends and a checkpoint of it is saved (the state
    k steps from scratch give), and the command says so in one line. The rerun resumes from it (as after any
    checkpoint: tests/test_kill_anywhere.py)."""
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    train = options(TINY_DIFF, "--steps", "100000", "--ckpt-every", "100000")  # no checkpoint before the signal
    for run in (a, b):
        cli("index", "--run", run, "--data", tiny_data, *TINY_INDEX, "-q")
    proc = drdc_process("train-diff", "--run", a, "-q", *train, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not list(a.glob("train_diff/*/files/config.json")) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(5)  # some steps
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == code
        msg = proc.stderr.read().strip()
    finally:
        proc.kill()
        proc.wait()
    assert len(msg.splitlines()) == 1 and "Traceback" not in msg and "to resume" in msg, msg
    e = next(e for e in RunStore(a).entries() if e.stage == "train_diff")
    saved = torch.load(e.files / "last.pt", weights_only=True)
    k = saved["step"]
    assert 0 < k < 100000
    # k steps from scratch, in a process like the stopped one (the thread count changes float sums, not the method)
    assert drdc_process("train-diff", "--run", b, "-q", *options(train, "--steps", str(k))).wait() == 0
    ref = torch.load(next(b.glob("train_diff/*/files/last.pt")), weights_only=True)
    assert ref["step"] == k
    for part in ("model", "ema"):
        assert all(torch.equal(saved[part][n], ref[part][n]) for n in ref[part]), part
