"""Shared fixtures: a tiny synthetic dataset and a CLI runner that reports output on failure."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stages.synthetic import SyntheticSpec, make_dataset

os.environ.setdefault("TQDM_DISABLE", "1")
MTD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mtd"

# Small enough for seconds-long end-to-end runs: 64 px images, 8x8 features, a 3x3 neighbour mask.
TINY = SyntheticSpec(size=64, n_train=8, n_test_good=3, n_test_defect=4)
TINY_INDEX = ["--image-size", "64"]
TINY_EXTRACT = ["--feature-size", "8"]
TINY_TRAIN = ["--epochs", "2", "--batch-size", "4", "--hidden-dim", "32", "--ffn-dim", "64", "--heads", "4",
              "--encoder-layers", "1", "--decoder-layers", "1", "--neighbor-size", "3", "--holdout", "0.25"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synthetic") / "data", TINY)


@pytest.fixture()
def cli():
    from drdc_cli.app import app
    from drdc_cli import cache_cmd, demo, pipeline, report, workflow  # noqa: F401  (register commands)

    runner = CliRunner()

    def invoke(*args: str, code: int = 0):
        res = runner.invoke(app, [str(a) for a in args])
        if code is not None and res.exit_code != code:
            raise AssertionError(f"exit {res.exit_code} != {code} for {args}\n{res.output}\n{res.exception!r}")
        return res

    return invoke
