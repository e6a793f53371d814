"""A train-base killed mid-run resumes from its last checkpoint and ends with the uninterrupted run's weights."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from stages.cache import RunStore

from conftest import TINY_EXTRACT, TINY_INDEX, TINY_TRAIN

TRAIN = [a if a != "2" else "12" for a in TINY_TRAIN[:2]] + TINY_TRAIN[2:]  # 12 epochs: time to be killed


@pytest.mark.slow
def test_killed_training_resumes_bit_identical(tiny_data, tmp_path, cli):
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    cli("index", "--data", tiny_data, "--run", a, *TINY_INDEX)
    cli("extract", "--run", a, *TINY_EXTRACT)
    shutil.copytree(a, b)

    cli("train-base", "--run", a, *TRAIN)
    reference = RunStore(a).current("train_base")

    cmd = [sys.executable, "-m", "drdc_cli", "train-base", "--run", str(b), "-q", *TRAIN]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    ckpt = b / "train_base" / reference.key / "files" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = RunStore(b).get("train_base", reference.key)
    assert killed is not None and not killed.is_complete, "the run finished before it could be killed"
    epochs_before = len(killed.attrs.get("history", []))
    assert epochs_before < 12

    res = cli("train-base", "--run", b, *TRAIN)
    assert "cached" not in res.output
    resumed = RunStore(b).current("train_base")
    assert resumed.key == reference.key
    w_ref = torch.load(reference.files / "model.pt", weights_only=True)
    w_new = torch.load(resumed.files / "model.pt", weights_only=True)
    assert w_ref.keys() == w_new.keys()
    assert all(torch.equal(w_ref[k], w_new[k]) for k in w_ref)
    assert [h["loss"] for h in resumed.attrs["history"]] == [h["loss"] for h in reference.attrs["history"]]
