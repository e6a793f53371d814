"""DDP training under torchrun (2 CPU ranks, gloo): train-base and train-diff into one run store, rank 0 writing.

The torchrun tests launch the real entry point (`python -m torch.distributed.run ... -m drdc_cli -- <command>`) as a
subprocess; each launch pays two interpreter start-ups, so there are three, and the uninterrupted reference of the
resume test runs its two ranks forked from pytest instead.
The quick tests pin what must not change for a single process: the recorded params, hence the cache keys.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stages.pipeline import dist
from stages.store.cache import RunStore, make_key
from stages.pipeline.runtime import keyed
from stages.errors import StoreError
from stages.models.reconstruction import ReconstructionConfig, UniADReconstruction
from stages.pipeline.train_base import TrainBaseParams
from stages.pipeline.train_diff import TrainDiffParams, _batch
from stages.pipeline.trained import load_unet

from conftest import TINY_DIFF, TINY_EXTRACT, TINY_INDEX, TINY_TRAIN, copy_run, options

ROOT = Path(__file__).resolve().parents[1]
# TINY_TRAIN with 8 epochs at lr 1e-3 and 2 images a rank a step: enough epochs for a kill to land mid-run
# and for the loss to fall visibly.
BASE = [*options(TINY_TRAIN, "--epochs", "8", "--batch-size", "2", "--lr", "1e-3"), "--device", "cpu", "--quiet"]
DIFF = [*options(TINY_DIFF, "--steps", "4"), "--device", "cpu", "--quiet"]  # 4 steps, ckpt every 2


# -- single process: nothing changes -----------------------------------------------------------------------------

OLD_BASE = {"hidden_dim": 256, "num_encoder_layers": 4, "num_decoder_layers": 4, "nhead": 8, "dim_feedforward": 1024,
            "dropout": 0.1, "neighbor_size": 7, "jitter_scale": 20.0, "jitter_prob": 1.0, "epochs": 1000,
            "batch_size": 8, "lr": 1e-4, "weight_decay": 1e-4, "schedule": "step", "lr_step": 800, "lr_gamma": 0.1,
            "warmup_epochs": 0, "grad_clip": 0.1, "holdout": 0.0, "seed": 0}
OLD_DIFF = {"size": 224, "model_channels": 256, "channel_mult": [1, 1, 2, 2, 4, 4], "num_res_blocks": 2,
            "attention_resolutions": [28, 14, 7], "num_head_channels": 64, "dropout": 0.0, "model_condition": True,
            "steps": 100_000, "batch_size": 16, "lr": 1e-4, "weight_decay": 1e-4, "ema": 0.9999, "grid": [1, 16, 32],
            "n_s": 2, "t_max": 999, "seed": 0, "ckpt_every": 500}
UP = {"extract": "0123456789ab"}


@pytest.fixture()
def no_torchrun(monkeypatch):
    for v in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(v, raising=False)


def test_single_process_params_and_keys_unchanged(no_torchrun, monkeypatch):
    """The params (and keys) of a plain run are the pre-DDP ones: existing caches stay valid. The hex keys were
    computed before DDP support was added."""
    base, diff = TrainBaseParams(), TrainDiffParams()
    assert dist.ddp_params(base.key_params(), base.batch_size) == OLD_BASE
    assert dist.ddp_params(diff.key_params(), diff.batch_size) == OLD_DIFF  # --task paper adds no key field
    assert make_key("train_base", dist.ddp_params(base.key_params(), 8), UP) == "db8439cf5d4d"
    assert make_key("train_diff", dist.ddp_params(diff.key_params(), 16), {"index": "0123456789ab"}) == "69a64e3f3cdc"
    monkeypatch.setenv("WORLD_SIZE", "4")
    ddp = dist.ddp_params(base.key_params(), base.batch_size)
    assert ddp == {**OLD_BASE, "world_size": 4, "effective_batch_size": 32}
    assert make_key("train_base", ddp, UP) != "db8439cf5d4d"  # a 4-rank run never reuses or resumes a 1-rank one


def test_rank_streams(no_torchrun, monkeypatch):
    """Rank 0 draws the single-process samples; rank 1 draws other ones; each is a function of (seed, step, rank)."""
    p = TrainDiffParams(size=32, grid=(1, 4, 8), batch_size=4)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    r0, r0_again, r1 = _batch(p, images, 5), _batch(p, images, 5, rank=0), _batch(p, images, 5, rank=1)
    assert all(torch.equal(a, b) for a, b in zip(r0, r0_again))
    assert not torch.equal(r0[3], r1[3]) and not torch.equal(r0[1], r1[1])  # noise and image condition differ
    assert all(torch.equal(a, b) for a, b in zip(r1, _batch(p, images, 5, rank=1)))
    assert dist.rank_seed(0, 3) == dist.rank_seed(0, 3)
    monkeypatch.setenv("RANK", "1")
    seeds = {dist.rank_seed(0, 3)}
    monkeypatch.setenv("RANK", "0")
    assert dist.rank_seed(0, 3) not in seeds


def test_helpers_without_process_group(no_torchrun):
    assert dist.main_decides(lambda: ("k", True)) == ("k", True)
    assert dist.all_reduce_sum(1.5, 2) == (1.5, 2)
    m = torch.nn.Linear(2, 2)
    assert dist.wrap_ddp(m, torch.device("cpu")) is m


# -- torchrun, 2 ranks on CPU --------------------------------------------------------------------------------------

def torchrun(run: Path, *args: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 -m drdc_cli -- <args> --run run` on CPU, one thread a rank.
    The `--` keeps torchrun's own parser off drdc's options (it would read `--run` as an abbreviation of its
    `--run-path`)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "drdc_cli", "--", args[0], "--run", str(run), *args[1:]]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    if not wait:  # its own session, so the whole job (launcher and ranks) can be cleaned up
        return subprocess.Popen(cmd, cwd=run.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    res = subprocess.run(cmd, cwd=run.parent, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"torchrun {args}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def prepared(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """index + extract of the tiny data, made in-process (never trained). No validation split: these tests are
    about DDP training, and every train image keeps the tiny runs' loss curves as they were measured."""
    from typer.testing import CliRunner

    from drdc_cli.app import app, register_commands

    register_commands()
    run = tmp_path_factory.mktemp("ddp") / "prepared.zarr"
    for args in (["index", "--data", tiny_data, *TINY_INDEX, "--val-fraction", "0"], ["extract", *TINY_EXTRACT]):
        res = CliRunner().invoke(app, [str(a) for a in [args[0], "--run", run, *args[1:]]])
        assert res.exit_code == 0, res.output
    return run


def _as_rank(rank: int, port: int, fn, args: tuple, results) -> None:
    torch.set_num_threads(1)  # before any op: the parent's OpenMP pool does not survive a fork
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # what torchrun gives each rank
    dist.setup(torch.device("cpu"))
    try:
        results.put((rank, fn(*args)))
    finally:
        torch.distributed.destroy_process_group()


def fork_ranks(fn, *args) -> dict[int, object]:
    """fn(*args) on 2 gloo ranks forked from this process: the code path under torchrun without paying two
    interpreter start-ups. Returns each rank's result (or raised exception)."""
    import multiprocessing as mp
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_as_rank, args=(r, port, fn, args, results)) for r in range(2)]
    for q in procs:
        q.start()
    out = dict(results.get(timeout=300) for _ in procs)
    for q in procs:
        q.join(timeout=60)
    assert [q.exitcode for q in procs] == [0, 0]
    return out


def _decide_and_reduce() -> tuple:
    def fail_on_main():
        raise StoreError("train-base abc in r.zarr is being written by pid 1")

    try:
        dist.main_decides(fail_on_main)
        err = None
    except StoreError as e:  # every rank gets rank 0's error instead of waiting on a broadcast
        err = str(e)
    key = dist.main_decides(lambda: f"decided by rank {dist.rank()}")
    return err, key, dist.all_reduce_sum(1.5 + dist.rank(), 1), dist.rank_seed(0, 0)


def test_collectives_on_two_ranks(no_torchrun):
    out = fork_ranks(_decide_and_reduce)
    assert out[0][:3] == out[1][:3] == ("train-base abc in r.zarr is being written by pid 1", "decided by rank 0",
                                        (4.0, 2.0))
    assert out[0][3] != out[1][3]  # per-rank seeds


def _train_base(run: Path, params: dict) -> str:
    from stages.pipeline import train_base

    return train_base.run(RunStore(run), TrainBaseParams(**params), device="cpu", progress=False).key


@pytest.mark.slow
def test_ddp_train_base_resumes_after_kill(prepared: Path, tmp_path: Path, cli, no_torchrun):
    """torchrun train-base on 2 ranks, SIGTERM to the launcher mid-run (as a scheduler would), then the same
    command: it resumes from rank 0's last checkpoint and ends with the weights of an uninterrupted 2-rank run,
    bit for bit. Then the result: params, a falling loss, a checkpoint that loads in one process, infer-base."""
    run = copy_run(prepared, tmp_path / "r.zarr")
    proc = torchrun(run, "train-base", *BASE, wait=False)
    try:
        deadline = time.time() + 240
        while not list(run.glob("train_base/*/files/last.pt")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # any rank the launcher left behind
        except ProcessLookupError:
            pass
    (killed,) = [e for e in RunStore(run).entries() if e.stage == "train_base"]
    assert not killed.is_complete, "the run finished before it could be killed"
    done_before = torch.load(killed.files / "last.pt", weights_only=True)["epoch"] + 1
    assert 1 <= done_before < 8

    ref_run = copy_run(prepared, tmp_path / "ref.zarr")
    params = {k: v for k, v in killed.params.items() if k not in ("world_size", "effective_batch_size")}
    keys = fork_ranks(_train_base, ref_run, params)  # an uninterrupted 2-rank run
    ref = RunStore(ref_run).current("train_base")
    assert keys == {0: ref.key, 1: ref.key}
    assert ref.key == killed.key  # same params, inputs and world size

    torchrun(run, "train-base", *BASE)
    e = RunStore(run).current("train_base")
    assert e.key == ref.key and "resumed" in e.attrs
    w_ref = torch.load(ref.files / "model.pt", weights_only=True)
    w_new = torch.load(e.files / "model.pt", weights_only=True)
    assert w_ref.keys() == w_new.keys() and all(torch.equal(w_ref[k], w_new[k]) for k in w_ref)
    assert [r["loss"] for r in e.attrs["history"]] == [r["loss"] for r in ref.attrs["history"]]

    assert e.params["world_size"] == 2 and e.params["batch_size"] == 2 and e.params["effective_batch_size"] == 4
    assert e.params["lr"] == 1e-3  # used as given, no scaling
    assert e.attrs["backend"] == "gloo"
    h = e.attrs["history"]
    assert [r["epoch"] for r in h] == list(range(8))
    losses = [r["loss"] for r in h]
    assert losses[-1] < 0.95 * losses[0] and sum(b < a for a, b in zip(losses, losses[1:])) >= 6
    assert all("val_loss" in r for r in h) and h[-1]["val_loss"] < h[0]["val_loss"]  # rank 0's held-out images
    assert e.attrs["n_fit"] + e.attrs["n_val"] == 24

    # The checkpoint is a plain state dict (no DDP "module." prefix): it loads strictly in a single process.
    cfg = ReconstructionConfig.from_dict(json.loads((e.files / "config.json").read_text()))
    model = UniADReconstruction(cfg)
    model.load_state_dict(torch.load(e.files / "model.pt", map_location="cpu", weights_only=True))
    last = torch.load(e.files / "last.pt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 7 and all(torch.equal(v, model.state_dict()[k]) for k, v in last["model"].items())
    res = cli("infer-base", "--run", run, "--device", "cpu", "--quiet")
    assert "infer-base" in res.output


@pytest.mark.slow
def test_ddp_train_diff(prepared: Path, tmp_path: Path, cli, no_torchrun):
    run = copy_run(prepared, tmp_path / "r.zarr")
    torchrun(run, "train-diff", *DIFF)
    e = RunStore(run).current("train_diff")
    assert e.params["world_size"] == 2 and e.params["effective_batch_size"] == 8 and e.attrs["backend"] == "gloo"
    h = e.attrs["history"]
    assert [r["step"] for r in h] == [2, 4] and all(0 < r["loss"] < 10 for r in h)
    unet = load_unet(e, torch.device("cpu"))  # EMA weights, strict load in one process
    last = torch.load(e.files / "last.pt", map_location="cpu", weights_only=True)
    assert last["step"] == 4 and all(torch.equal(v, unet.state_dict()[k]) for k, v in last["ema"].items())
    assert last["model"].keys() == unet.state_dict().keys()  # no DDP "module." prefix
    # The DDP weights differ from a one-process run of the same command (different batches): a real 2-rank run.
    cli("train-diff", "--run", run, *DIFF)
    single = RunStore(run).current("train_diff")
    w1 = torch.load(single.files / "last.pt", weights_only=True)["model"]
    assert single.key != e.key and any(not torch.equal(w1[k], last["model"][k]) for k in w1)
