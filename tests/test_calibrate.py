"""`drdc calibrate`: thresholds from held-out normal images against a numpy percentile oracle, their use by
`drdc predict`, the flagged --on-test-labels mode and bad options."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from stages.store.cache import RunStore
from stages.apps.calibrate import f1max_threshold
from stages.data.dataset import split_train

from conftest import TINY_EXTRACT, TINY_INDEX, TINY_TRAIN, copy_run


def _csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def _entry(run: Path):
    s = RunStore(run)
    return s.get("calibrate", s.current_keys["calibrate"])


@pytest.fixture(scope="module")
def calibrated(full_run_pristine, tmp_path_factory):
    from typer.testing import CliRunner

    from drdc_cli.app import app, register_commands

    register_commands()
    run = copy_run(full_run_pristine, tmp_path_factory.mktemp("cal") / "r.zarr")
    res = CliRunner().invoke(app, ["calibrate", "--run", str(run), "--fpr", "0.25", "--pixel", "-q"])
    assert res.exit_code == 0, res.output
    return run, res.output


def test_thresholds_match_numpy_percentiles_of_predicted_normals(calibrated, cli, tmp_path):
    run, output = calibrated
    s = RunStore(run)
    index = s.current("index")
    records, root = index.attrs["records"], Path(index.params["root"])
    tb = s.current("train_base").params
    _, holdout = split_train(records, tb["holdout"], tb["seed"])
    val = [i for i, r in enumerate(records) if r["split"] == "val" and r["label"] == 0]
    held = sorted(set(holdout) | set(val))  # the normals no trainer saw: train-base's holdout + the index's
    assert holdout and val and all(records[i]["label"] == 0 and records[i]["split"] in ("train", "val") for i in held)
    # oracle: the held-out normal images scored by `drdc predict` (files, not the store), then numpy percentiles
    cli("predict", "--run", run, *[root / records[i]["path"] for i in held], "--out", tmp_path / "p", "--no-pictures")
    rows = _csv(tmp_path / "p" / "predictions.csv")
    th = _entry(run).attrs["thresholds"]
    scores = {c: np.array([float(r["score"]) for r in rows if r["category"] == c]) for c in th["image"]}
    for cat, v in scores.items():
        assert th["image"][cat] == pytest.approx(np.percentile(v, 75), rel=1e-5)
    pooled = np.concatenate(list(scores.values()))
    assert th["image_global"] == pytest.approx(np.percentile(pooled, 75), rel=1e-5)
    assert sum(th["n_normal"].values()) == len(held) and not th["on_test_labels"]
    # the pixel threshold: at most 25% of the held-out normal pixels above it
    maps = _entry(run).array("maps")[:]
    cats = np.array([records[i]["category"] for i in _entry(run).array("record")[:]])
    for cat, v in th["pixel"].items():
        px = maps[cats == cat].ravel()
        assert v == pytest.approx(np.percentile(px, 75), rel=1e-6) and (px > v).mean() <= 0.25 + 1e-9
    assert "image threshold" in output and "pixel threshold" in output


def test_predict_uses_the_thresholds(calibrated, cli, tiny_data, tmp_path):
    run, _ = calibrated
    th = _entry(run).attrs["thresholds"]
    test = tiny_data / "weave" / "test"
    cli("predict", "--run", run, test / "good" / "000.png", test / "hole" / "000.png", test / "scratch" / "000.png",
        "--out", tmp_path / "o")
    rows = _csv(tmp_path / "o" / "predictions.csv")
    for r in rows:
        assert float(r["threshold"]) == pytest.approx(th["image"]["weave"])
        assert r["verdict"] == ("anomalous" if float(r["score"]) > float(r["threshold"]) else "normal")
    assert list((tmp_path / "o" / "pictures").glob("*_mask.png"))  # --pixel gives binary masks
    # an image outside any MVTec-like path has an unknown category: the global threshold
    img = tmp_path / "x.png"
    img.write_bytes((tiny_data / "weave" / "test" / "good" / "000.png").read_bytes())
    cli("predict", "--run", run, img, "--out", tmp_path / "u", "--no-pictures")
    row = _csv(tmp_path / "u" / "predictions.csv")[0]
    assert row["category"] == "" and float(row["threshold"]) == pytest.approx(th["image_global"])
    # other fusion settings than the calibration's: uncalibrated, with a hint
    res = cli("predict", "--run", run, img, "--gamma", "0.5", "--no-pictures")
    assert "uncalibrated" in res.output and "other settings" in res.output


def test_another_rule_reuses_the_scores(calibrated, cli):
    run, _ = calibrated
    before = _entry(run).key
    res = cli("calibrate", "--run", run, "--percentile", "90", "-q")
    e = _entry(run)
    assert e.key == before and "cached" in res.output
    scores = e.array("scores")[:]
    records = RunStore(run).current("index").attrs["records"]
    cats = np.array([records[i]["category"] for i in e.array("record")[:]])
    for cat, v in e.attrs["thresholds"]["image"].items():
        assert v == pytest.approx(np.percentile(scores[cats == cat], 90), rel=1e-6)
    assert e.attrs["thresholds"]["pixel"] is None


def test_on_test_labels_is_flagged_and_f1_maximal(full_run, cli, tmp_path):
    res = cli("calibrate", "--run", full_run, "--on-test-labels")
    assert "WARNING" in res.output and "test" in res.output
    s = RunStore(full_run)
    e = s.get("calibrate", s.current_keys["calibrate"])
    th = e.attrs["thresholds"]
    assert th["on_test_labels"] is True
    score = next(x for x in s.entries() if x.stage == "score" and x.params["source"] == "fuse")
    records = s.current("index").attrs["records"]
    rec, scores = score.array("record")[:], score.array("scores")[:]
    for cat, thr in th["image"].items():
        sel = np.array([records[i]["category"] == cat for i in rec])
        y = np.array([records[i]["label"] for i in rec])[sel]
        v = scores[sel]

        def f1(pred):
            tp = (pred & (y == 1)).sum()
            return 2 * tp / (pred.sum() + (y == 1).sum())

        best = max(f1(v >= u) for u in np.unique(v))  # brute force over every cut
        assert f1(v > thr) == pytest.approx(best)
    out = cli("predict", "--run", full_run, Path(s.current("index").params["root"]) / records[rec[0]]["path"],
              "--no-pictures")
    assert "WARNING" in out.output and "test labels" in out.output


def test_f1max_threshold_small_case():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    thr = f1max_threshold(labels, scores)
    assert 0.2 <= thr < 0.35  # flags 0.35, 0.4, 0.8, 0.9: F1 = 6/7, the best cut


@pytest.mark.parametrize("args,needle", [(["--fpr", "1.5"], "--fpr"), (["--percentile", "0"], "--percentile"),
                                         (["--fpr", "0.1", "--percentile", "90"], "not both"),
                                         (["--on-test-labels", "--fpr", "0.1"], "--on-test-labels")])
def test_bad_options(full_run_pristine, cli, args, needle):
    res = cli("calibrate", "--run", full_run_pristine, *args, code=2)
    assert needle in res.output and "Traceback" not in res.output


def test_no_holdout_is_refused(tiny_data, tmp_path, cli):
    run = tmp_path / "r.zarr"
    train = [a if a != "0.25" else "0" for a in TINY_TRAIN]
    cli("index", "--data", tiny_data, "--run", run, *TINY_INDEX, "--val-fraction", "0")
    cli("extract", "--run", run, *TINY_EXTRACT)
    cli("train-base", "--run", run, *train)
    res = cli("calibrate", "--run", run, code=2)
    assert "--val-fraction" in res.output and "drdc index" in res.output


def test_unknown_run(cli, tmp_path):
    res = cli("calibrate", "--run", tmp_path / "none.zarr", code=1)
    assert "no run store" in res.output


def test_images_of_no_trained_category_are_flagged_outside(calibrated, cli, tiny_data, tmp_path):
    """The distance to the nearest trained category (median over positions of the Mahalanobis distance to each
    category's Gaussians, then the smallest): its threshold from the held-out normals, by its formula; images of
    no trained kind (noise, a flat grey) are marked outside, the category's own normal test images are not."""
    from PIL import Image

    run, output = calibrated
    e = _entry(run)
    normals = e.array("outside")[:]
    th = e.attrs["thresholds"]["outside"]
    assert th == pytest.approx(float(np.median(normals)) + 2 * (float(normals.max()) - float(np.median(normals))))
    rng = np.random.default_rng(0)
    foreign = [tmp_path / "noise.png", tmp_path / "grey.png"]
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(foreign[0])
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(foreign[1])
    goods = sorted(tiny_data.glob("*/test/good/*.png"))
    res = cli("predict", "--run", run, *foreign, *goods, "--out", tmp_path / "p", "--no-pictures")
    rows = {Path(r["path"]).name if "good" not in r["path"] else r["path"]: r for r in _csv(tmp_path / "p" / "predictions.csv")}
    assert rows["noise.png"]["outside"] == "True" and rows["grey.png"]["outside"] == "True"
    assert all(r["outside"] == "False" for k, r in rows.items() if "good" in k)
    assert all(float(r["outside_score"]) > th for k, r in rows.items() if "good" not in k)
    assert "look like none of the run's categories" in res.stderr and "outside" in res.output


def test_a_false_positive_rate_below_one_over_n_is_said_to_be_unsupported(full_run, cli):
    res = cli("calibrate", "--run", full_run, "--fpr", "0.01", "-q")
    assert "cannot be supported by 4 normal images (1/4 = 0.25)" in res.stderr
    e = _entry(full_run)
    assert e.attrs["thresholds"]["warnings"]
    res = cli("calibrate", "--run", full_run, "--fpr", "0.5", "-q")
    assert "cannot be supported" not in res.stderr and not _entry(full_run).attrs["thresholds"]["warnings"]
