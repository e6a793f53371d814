"""Run files: `drdc config` -> `drdc run --config` makes the same keys; every bad key is one line naming it."""
from __future__ import annotations

import sys

import pytest

from stages.store.cache import RunStore

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


@pytest.fixture(scope="module")
def written(full_run_pristine, tmp_path_factory, tiny_data):
    from typer.testing import CliRunner

    from drdc_cli.app import app, register_commands

    register_commands()
    path = tmp_path_factory.mktemp("runfile") / "run.toml"
    res = CliRunner().invoke(app, ["config", "--run", str(full_run_pristine), "--toml", str(path)])
    assert res.exit_code == 0, res.output
    return path


def test_config_then_run_config_makes_the_same_keys(written, full_run_pristine, tiny_data, tmp_path, cli):
    doc = tomllib.loads(written.read_text())
    assert doc["run"]["data"] == str(tiny_data) and doc["train-base"]["hidden-dim"] == 32
    assert doc["infer-diff"]["c"] == [1, 8] and doc["infer-diff"]["init"] == "paper"
    printed = cli("config", "--run", full_run_pristine).output
    assert tomllib.loads(printed) == doc  # printed and written alike
    fresh = tmp_path / "again.zarr"
    log = tmp_path / "run.log"
    cli("--log-file", log, "run", "--config", written, "--run", fresh, "-q")
    assert RunStore(fresh).current_keys == RunStore(full_run_pristine).current_keys
    text = log.read_text()  # every stage the run file ran, through the commands, in the one log
    for stage in ("index", "extract", "train-base", "infer-base", "train-diff", "infer-diff", "fuse", "score"):
        assert f"INFO    ✓ {stage} " in text, text
    assert text.count("INFO    drdc 0.1.0: ") == 1 and "Category" in text  # one header; the report's table


@pytest.mark.parametrize("old,new,needle", [
    ("epochs = 2\n", "epoch = 2\n", "[train-base] epoch: unknown key; train-base takes"),
    ("epochs = 2\n", 'epochs = "two"\n', "[train-base] epochs: must be an integer (got 'two')"),
    ("epochs = 2\n", "epochs = -1\n", "[train-base] epochs: must be in [0, 1000000] (got -1)"),
    ("heads = 4\n", "heads = 3\n", "[train-base] hidden-dim: must be divisible by nhead=3"),
    ("model-condition = true\n", "model-condition = 1\n", "[train-diff] model-condition: must be true or false"),
    ("[fuse]\n", "[fusion]\n", "[fusion] unknown table"),
    ("gamma = 0.9\n", "gamma = 1.5\n", "[fuse] gamma: must be in [0, 1] (got 1.5)"),
    ("ns = 2\n", "ns = 2.5\n", "[train-diff] ns: must be an integer (got 2.5)"),
    ("[run]\n", "[run]\nmodel = 1\n", "[run] model: unknown key"),
    ("[index]\n", "[index\n", "not valid TOML"),
])
def test_a_bad_key_is_one_line_naming_file_line_and_key(old, new, needle, written, tmp_path, cli):
    text = written.read_text()
    assert old in text
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(old, new, 1))
    res = cli("run", "--config", bad, "--run", tmp_path / "r.zarr", code=2)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and str(bad) in lines[0], res.stderr
    if "TOML" not in needle:  # the line of the key (or of its table)
        at = int(lines[0].split(str(bad) + ":", 1)[1].split(":", 1)[0])
        shown = bad.read_text().splitlines()[at - 1]
        key = new.strip().splitlines()[-1].split("=")[0].strip().strip("[]")
        assert key in shown or shown.startswith("["), (at, shown)
    assert not (tmp_path / "r.zarr").exists(), "a refused run file started the pipeline"


def test_config_is_given_alone(written, tiny_data, tmp_path, cli):
    res = cli("run", "--config", written, "--data", tiny_data, "--run", tmp_path / "r.zarr", code=2)
    assert "--config holds the data" in res.stderr


def test_config_lists_every_map_the_run_holds_when_the_fusion_reads_none(full_run, cli):
    """Tune may choose gamma 0 (base only): the fusion reads no diffusion map, but the run holds maps of c 1 and 8
    that a rerun of the file must remake (it used to list the last one made only)."""
    cli("fuse", "--run", full_run, "--gamma", "0", "-q")
    cli("score", "--run", full_run, "--source", "fuse", "-q")
    doc = tomllib.loads(cli("config", "--run", full_run).output)
    assert doc["fuse"]["gamma"] == 0 and doc["infer-diff"]["c"] == [1, 8]
