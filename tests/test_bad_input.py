"""Bad input: one line naming the culprit, the right exit code, no traceback, nothing cached lost.

Damaged datasets, odd images and store faults are in test_hostile_input.py; these are the remaining cases."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stages.store.cache import RunStore

from conftest import TINY_EXTRACT, TINY_INDEX


def _copy(tiny_data: Path, tmp_path: Path, cats=("disc",)) -> Path:
    root = tmp_path / "data"
    for c in cats:
        shutil.copytree(tiny_data / c, root / c)
    return root


def _one_error_line(res) -> str:
    # Progress bars share stderr; every other line counts.
    lines = [ln for ln in res.stderr.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    assert len(lines) == 1, res.output
    assert "Traceback" not in res.output
    return lines[0]


def test_missing_root(tmp_path, cli):
    res = cli("index", "--data", tmp_path / "nope", "--run", tmp_path / "r.zarr", code=1)
    assert "nope: dataset root does not exist" in _one_error_line(res)


def test_missing_run_store(tmp_path, cli):
    res = cli("extract", "--run", tmp_path / "none.zarr", code=1)
    assert "no run store here" in _one_error_line(res)


def test_stage_before_its_input(tmp_path, tiny_data, cli):
    run = tmp_path / "r.zarr"
    cli("index", "--data", _copy(tiny_data, tmp_path), "--run", run, *TINY_INDEX)
    res = cli("train-base", "--run", run, code=1)
    assert "run `drdc extract --run" in _one_error_line(res)


@pytest.fixture(scope="module")
def indexed(tiny_data, tmp_path_factory):
    """A run store with index + extract done, shared by the option cases (none of them may change it)."""
    from typer.testing import CliRunner

    from drdc_cli import pipeline  # noqa: F401
    from drdc_cli.app import app

    base = tmp_path_factory.mktemp("opts")
    run = base / "r.zarr"
    r = CliRunner()
    assert r.invoke(app, ["index", "--data", str(_copy(tiny_data, base)), "--run", str(run), *TINY_INDEX]).exit_code == 0
    assert r.invoke(app, ["extract", "--run", str(run), *TINY_EXTRACT]).exit_code == 0
    return run


@pytest.mark.parametrize("args,needle", [
    (["extract", "--backbone", "resnet9000"], "--backbone: must be one of tf_efficientnet_lite0"),
    (["extract", "--feature-size", "1"], "--feature-size"),
    (["extract", "--preset", "huge"], "--preset: must be one of paper, cpu (got 'huge')"),
    (["extract", "--device", "cuda:7"], "--device"),
    (["train-base", "--epochs", "-1"], "--epochs: must be in [0, 1000000] (got -1)"),
    (["train-base", "--holdout", "0.7"], "--holdout"),
    (["train-base", "--lr", "-1"], "--lr"),
    (["train-base", "--schedule", "linear"], "--schedule"),
    (["train-base", "--neighbor-size", "4"], "--neighbor-size: must be odd"),
    (["train-base", "--neighbor-size", "9"], "neighbor_size=9 must be < feature_size=8"),
    (["train-base", "--hidden-dim", "30", "--heads", "8"], "--hidden-dim"),
    (["score", "--pool", "0"], "--pool"),
    (["score", "--source", "magic"], "--source"),
    (["report", "--variant", "ffffff"], "--variant ffffff"),
])
def test_bad_option_is_named_and_store_untouched(indexed, cli, args, needle):
    before = RunStore(indexed).current_keys
    n_entries = len(list(RunStore(indexed).entries()))
    res = cli(*args[:1], "--run", indexed, *args[1:], code=None)
    assert res.exit_code in (1, 2)
    assert needle in _one_error_line(res)
    assert RunStore(indexed).current_keys == before and len(list(RunStore(indexed).entries())) == n_entries


def test_index_bad_image_size(tmp_path, tiny_data, cli):
    res = cli("index", "--data", tiny_data, "--run", tmp_path / "r.zarr", "--image-size", "30", code=2)
    assert "--image-size" in _one_error_line(res)
