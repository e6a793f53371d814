"""Shared fixtures: a tiny synthetic dataset and a CLI runner that reports output on failure."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stages.data.synthetic import SyntheticSpec, make_dataset

if os.environ.get("PYTEST_XDIST_WORKER"):  # two test processes share the cores: one torch thread each, children too
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

os.environ.setdefault("TQDM_DISABLE", "1")
MTD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mtd"

# Small enough for seconds-long end-to-end runs: 64 px images, 8x8 features, a 3x3 neighbour mask.
TINY = SyntheticSpec(size=64, n_train=8, n_test_good=3, n_test_defect=4)
TINY_INDEX = ["--image-size", "64", "--val-min", "2"]  # 2 validation normals + 4 synthetic defects a category
TINY_EXTRACT = ["--feature-size", "8"]
TINY_TRAIN = ["--epochs", "2", "--batch-size", "4", "--hidden-dim", "32", "--ffn-dim", "64", "--heads", "4",
              "--encoder-layers", "1", "--decoder-layers", "1", "--neighbor-size", "3", "--holdout", "0.25"]


def shared(tmp_path_factory: pytest.TempPathFactory, name: str, make) -> Path:
    """A session artefact made once for the whole run, however many pytest-xdist workers share it: the first to
    take the lock makes it (make(folder)) in the base folder every worker shares, the others wait and reuse it."""
    import fcntl

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base folders are popen-gw0, popen-gw1 ... under one parent
    folder = root / f"shared-{name}"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".made").exists():
            if folder.exists():  # an earlier maker was killed half-way
                import shutil

                shutil.rmtree(folder)
            folder.mkdir()
            make(folder)
            (folder / ".made").touch()
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared(tmp_path_factory, "synthetic", lambda d: make_dataset(d / "data", TINY)) / "data"


# A 32 px diffusion branch: 2 levels, attention at 16 px, 3 training steps. Enough to exercise every path.
TINY_DIFF = ["--size", "32", "--model-channels", "8", "--channel-mult", "1,2", "--res-blocks", "1",
             "--attention", "16", "--head-channels", "8", "--steps", "3", "--batch-size", "4", "--grid", "1,4,8",
             "--ckpt-every", "2"]
# the paper's start and pixel maps (the cpu preset's DDAD start and feature maps: tests/test_diffusion_options.py)
TINY_INFER = ["--t", "100,50,0", "--l", "1,2", "--ns", "2", "--init", "paper", "--distance", "pixel"]


def drdc_process(*args, stderr=None):
    """`python -m drdc_cli *args` in its own process, as a user starts it from a shell: one torch thread (a second
    process beside the suite's), tables at full width, and SIGINT delivered (under nohup children inherit it
    ignored, so it is given back)."""
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen([sys.executable, "-m", "drdc_cli", *map(str, args)], cwd=root,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"},
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def options(base: list, *pairs) -> list:
    """base with each (flag, value) of pairs replacing that flag's value, or appended: an option is given once."""
    out = list(base)
    for flag, value in zip(pairs[::2], pairs[1::2]):
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


def _invoke_all(run: Path, steps: list[list]) -> None:
    from drdc_cli.app import app, register_commands

    register_commands()
    r = CliRunner()
    for args in steps:
        res = r.invoke(app, [str(a) for a in [args[0], "--run", run, *args[1:]]])
        assert res.exit_code == 0, f"{args}: {res.output}"


@pytest.fixture(scope="session")
def full_run_pristine(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every stage once on TINY data (base and diffusion trained, c=1,8 heatmaps, fused, scored base and fuse).
    Shared by the whole session: never write to it; copy it (`copy_run`) first."""
    def make(folder: Path) -> None:
        _invoke_all(folder / "r.zarr", [
            ["index", "--data", tiny_data, *TINY_INDEX], ["extract", *TINY_EXTRACT], ["train-base", *TINY_TRAIN],
            ["infer-base"], ["score", "--source", "base"], ["train-diff", *TINY_DIFF],
            ["infer-diff", *TINY_INFER, "--c", "1,8"], ["fuse", "--c", "1,8"], ["score", "--source", "fuse"]])

    return shared(tmp_path_factory, "full", make) / "r.zarr"


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def exported(full_run_pristine: Path, tmp_path_factory: pytest.TempPathFactory):
    """(a copy of the full tiny run, its ONNX export folder, the manifest): shared by tests/test_export.py and the
    predict benchmark's smoke run (an export takes about a minute)."""
    from stages.apps.export.folder import export
    from stages.store.cache import RunStore

    def make(folder: Path) -> None:
        export(RunStore(copy_run(full_run_pristine, folder / "r.zarr")), folder / "onnx", "onnx")

    folder = shared(tmp_path_factory, "export", make)  # the manifest as export returned it is what it wrote
    return folder / "r.zarr", folder / "onnx", json.loads((folder / "onnx" / "manifest.json").read_text())


@pytest.fixture()
def full_run(full_run_pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the full tiny run, free to modify."""
    return copy_run(full_run_pristine, tmp_path / "run.zarr")


@pytest.fixture()
def cli():
    from drdc_cli.app import app, register_commands

    register_commands()
    runner = CliRunner()

    def invoke(*args: str, code: int = 0):
        res = runner.invoke(app, [str(a) for a in args])
        if code is not None and res.exit_code != code:
            raise AssertionError(f"exit {res.exit_code} != {code} for {args}\n{res.output}\n{res.exception!r}")
        return res

    return invoke
