"""The CLI end to end on tiny synthetic data: every stage, caching, new keys, stale inputs, reports."""
from __future__ import annotations

import csv
import json

import pytest

from stages.store.cache import RunStore

from conftest import TINY_EXTRACT, TINY_INDEX, TINY_TRAIN


def _pipeline(cli, data, run, train=TINY_TRAIN):
    return [
        cli("index", "--data", data, "--run", run, *TINY_INDEX),
        cli("extract", "--run", run, *TINY_EXTRACT),
        cli("train-base", "--run", run, *train),
        cli("infer-base", "--run", run),
        cli("score", "--run", run),
    ]


@pytest.fixture(scope="module")
def done_run(tiny_data, tmp_path_factory):
    from typer.testing import CliRunner

    from drdc_cli.app import app, register_commands

    register_commands()

    run = tmp_path_factory.mktemp("runs") / "r.zarr"
    runner = CliRunner()

    def cli(*args):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
        return res

    outs = _pipeline(cli, tiny_data, run)
    return run, outs


def test_every_stage_runs_and_reports(done_run, cli, tmp_path):
    run, outs = done_run
    assert all("✓" in o.output and "cached" not in o.output for o in outs)
    res = cli("report", "--run", run, "--csv", tmp_path / "m.csv", "--json", tmp_path / "m.json",
              "--per-image", tmp_path / "img.csv")
    for cat in ("weave", "disc", "grain", "Mean"):
        assert cat in res.output
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    test_rows = [r["category"] for r in rows if not r["category"].startswith("val:")]
    assert test_rows[-1] == "mean" and "val:mean" in [r["category"] for r in rows]  # validation rows labelled
    attrs = RunStore(run).current("score").attrs
    kinds = {f"val:synthetic-{k}": v["mean"] for k, v in attrs["val_by_kind"].items()}
    for r in rows:
        cat = r["category"]
        c, _, d = cat.partition("/")
        want = (kinds[cat] if cat in kinds else attrs["val_metrics"][cat[4:]] if cat.startswith("val:")
                else attrs["test_by_kind"][c][d] if d else attrs["metrics"][cat])
        for name in ("i_auroc", "p_auroc", "p_aupro"):
            assert float(r[name]) == pytest.approx(want[name], abs=1e-6)
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["variants"][0]["params"] == {"source": "base", "pool": 16} and len([r for r in doc["rows"] if "/" not in r["category"]]) == 4
    assert len([r for r in doc["rows"] if "/" in r["category"]]) == sum(map(len, attrs["test_by_kind"].values())) > 0
    images = list(csv.DictReader(open(tmp_path / "img.csv")))
    test = [r for r in images if r["split"] == "test"]
    assert len(test) == 3 * (3 + 4) and {r["label"] for r in test} == {"0", "1"}
    assert {r["split"] for r in images} == {"val", "test"}


def test_rerun_is_cached_and_changes_nothing(done_run, cli, tiny_data):
    run, _ = done_run
    before = RunStore(run).current_keys
    for o in _pipeline(cli, tiny_data, run):
        assert "cached" in o.output
    assert RunStore(run).current_keys == before


def test_cache_ls_lists_entries(done_run, cli):
    run, _ = done_run
    res = cli("cache", "ls", "--run", run)
    for stage in ("index", "extract", "train-base", "infer-base", "score"):
        assert stage in res.output
    assert res.output.count("complete") == 5


def test_changed_parameter_new_entry_and_stale_downstream_refused(tiny_data, cli, tmp_path):
    run = tmp_path / "r.zarr"
    _pipeline(cli, tiny_data, run)
    first = RunStore(run).current_keys
    cli("train-base", "--run", run, *TINY_TRAIN[:-2], "--holdout", "0.0")
    assert RunStore(run).current_keys["train_base"] != first["train_base"]
    res = cli("score", "--run", run, code=1)  # infer-base still holds the old model's maps
    assert "rerun `drdc infer-base --run" in res.output and "Traceback" not in res.output
    cli("infer-base", "--run", run)
    cli("score", "--run", run)
    keys = RunStore(run).current_keys
    assert keys["infer_base"] != first["infer_base"] and keys["score"] != first["score"]
    assert keys["index"] == first["index"] and keys["extract"] == first["extract"]
    res = cli("report", "--run", run, "--variant", first["score"], "--variant", keys["score"][:6])
    assert f"base:{first['score'][:6]} = score {first['score']}" in res.output  # two variants side by side
    assert f"base:{keys['score'][:6]} = score {keys['score']}" in res.output


def test_category_without_masks_gets_a_dash(tiny_data, cli, tmp_path):
    import shutil

    root = tmp_path / "data"
    for c in ("disc", "grain"):
        shutil.copytree(tiny_data / c, root / c)
    shutil.rmtree(root / "grain" / "ground_truth")
    _pipeline(cli, root, tmp_path / "r.zarr")
    metrics = RunStore(tmp_path / "r.zarr").current("score").attrs["metrics"]
    assert metrics["grain"]["p_auroc"] is None and metrics["grain"]["i_auroc"] is not None
    assert metrics["disc"]["p_auroc"] is not None
    assert metrics["mean"]["p_auroc"] == pytest.approx(metrics["disc"]["p_auroc"])
    text = cli("report", "--run", tmp_path / "r.zarr").output
    row = next(ln for ln in text[text.index("TEST"):].splitlines() if "grain" in ln)  # the test table
    assert row.count("-") >= 4  # P-AUROC, P-AUPRO, P-AP, P-F1max


@pytest.mark.slow
def test_demo_runs_every_stage_and_reuses_its_cache(cli, tmp_path):
    args = ("demo", "--out", tmp_path / "demo", "--size", "64", "--epochs", "1", "--diff-steps", "2", "-q",
            "--n-train", "12", "--n-test-good", "2", "--n-test-defect", "3")
    res = cli(*args)
    for stage in ("index", "extract", "train-base", "infer-base", "train-diff", "infer-diff", "fuse", "score"):
        assert f"✓ {stage}" in res.output
    assert "Mean" in res.output and "demo finished" in res.output
    assert "pictures:" in res.output and len(list((tmp_path / "demo" / "pictures").glob("*.png"))) >= 6
    assert "base = score" in res.output and "fuse:" in res.output  # base-only, DRDC and tuned side by side
    assert "chosen on validation" in res.output and "VALIDATION" in res.output
    refused = cli(*args, code=2)  # its earlier predictions are in the way: named before any work
    assert "predictions.csv exists" in refused.stderr and "--overwrite" in refused.stderr
    again = cli(*args, "--overwrite")
    assert again.output.count("cached") >= 10  # data + every stage
