"""The CLI end to end on tiny synthetic data: every stage, caching, new keys, stale inputs, reports."""
from __future__ import annotations

import csv
import json
from pathlib import Path

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


def test_rerun_is_cached_and_changes_nothing(done_run, cli, tiny_data, tmp_path):
    run, _ = done_run
    before = RunStore(run).current_keys
    for o in _pipeline(cli, tiny_data, run):
        assert "cached" in o.output
    assert RunStore(run).current_keys == before
    # --log-file appends what was printed (plain text, timestamped); --verbose adds which entry was reused
    log = tmp_path / "drdc.log"
    log.write_text("the user's own line\n")
    printed = cli("--log-file", log, "--verbose", "score", "--run", run).output.strip()
    text = log.read_text()
    assert text.startswith("the user's own line\n") and printed.startswith("✓ score") and printed in text
    assert f"DEBUG   score {before['score']}: complete, reused" in text and "INFO    finished in" in text
    assert "[green]" not in text and "\x1b[" not in text


def test_cache_ls_lists_entries(done_run, cli):
    run, _ = done_run
    res = cli("cache", "ls", "--run", run)
    for stage in ("index", "extract", "train-base", "infer-base", "score"):
        assert stage in res.output
    assert res.output.count("complete") == 5
    listing = json.loads(cli("cache", "ls", "--run", run, "--json").output)  # the same, machine-readable
    store = RunStore(run)
    assert [(e["stage"], e["key"]) for e in listing["entries"]] == [(e.stage, e.key) for e in store.entries()]
    assert listing["current"] == store.current_keys and all(e["current"] for e in listing["entries"])
    assert all(e["status"] == "complete" and e["size_bytes"] > 0 and not e["running"] for e in listing["entries"])
    assert {e["stage"]: e["params"] for e in listing["entries"]}["train_base"] == store.current("train_base").params


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
    """The first run through benchmarks/bench_demo.py --quick (a fresh interpreter, as a user types it: the
    README's demo time is this script's figure); the rerun in process reuses every stage."""
    import json
    import os
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        from bench_demo import QUICK  # the same small demo the benchmark's --quick runs
    finally:
        sys.path.remove(str(bench))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, str(bench / "bench_demo.py"), "--quick", "--out", str(tmp_path / "demo"),
                           "--json", str(tmp_path / "t.json")], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    timed = json.loads((tmp_path / "t.json").read_text())
    assert timed["wall_s"] > sum(timed["stages_s"].values()) > 0 and timed["pictures"] >= 6
    for stage in ("index", "extract", "train-base", "infer-base", "train-diff", "infer-diff", "fuse", "score", "tune"):
        assert stage in timed["stages_s"], stage
    args = ("demo", "--out", tmp_path / "demo", *QUICK, "-q")
    refused = cli(*args, code=2)  # its earlier predictions are in the way: named before any work
    assert "predictions.csv exists" in refused.stderr and "--overwrite" in refused.stderr
    again = cli(*args, "--overwrite")
    assert again.output.count("cached") >= 10  # data + every stage
    assert "Mean" in again.output and "demo finished" in again.output
    assert "pictures:" in again.output and len(list((tmp_path / "demo" / "pictures").glob("*.png"))) >= 6
    assert "base = score" in again.output and "fuse:" in again.output  # base-only, DRDC and tuned side by side
    assert "chosen on validation" in again.output and "VALIDATION" in again.output
