"""`drdc predict` on the full tiny run: scores equal the pipeline's stored scores (the oracle that predict runs the
production path), CSV/JSON, pictures, base-only fallback and bad input."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.store.cache import RunStore
from stages.apps.predict.inputs import collect_images, picture_names

from conftest import TINY, copy_run


def _stored_scores(run: Path, source: str) -> dict[str, float]:
    """{dataset-relative path: score} of the score entry of one source, as `drdc score` stored them."""
    s = RunStore(run)
    records = s.current("index").attrs["records"]
    e = next(e for e in s.entries() if e.stage == "score" and e.is_complete and e.params["source"] == source)
    return {records[i]["path"]: float(v) for i, v in zip(e.array("record")[:], e.array("scores")[:])}


def _csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


@pytest.fixture(scope="module")
def predicted(full_run_pristine, tiny_data, tmp_path_factory):
    """One predict call over a whole category's test folder (normal and defective images)."""
    from typer.testing import CliRunner

    from drdc_cli.app import app, register_commands

    register_commands()
    tmp = tmp_path_factory.mktemp("pred")
    run = copy_run(full_run_pristine, tmp / "r.zarr")
    res = CliRunner().invoke(app, ["predict", "--run", str(run), str(tiny_data / "disc" / "test"),
                                   "--out", str(tmp / "out")])
    assert res.exit_code == 0, res.output
    return run, tmp / "out", res.output


def test_scores_equal_the_pipeline(predicted, tiny_data):
    run, out, output = predicted
    rows = _csv(out / "predictions.csv")
    stored = _stored_scores(run, "fuse")
    assert len(rows) == TINY.n_test_good + TINY.n_test_defect
    for r in rows:
        rel = Path(r["path"]).resolve().relative_to(tiny_data.resolve()).as_posix()
        assert float(r["score"]) == pytest.approx(stored[rel], rel=1e-5, abs=1e-6)
        assert r["category"] == "disc" and r["verdict"] == "uncalibrated" and r["threshold"] == ""
        assert r["truth"] == rel.split("/")[2]
    assert "uncalibrated" in output and "drdc calibrate" in output
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["settings"]["mode"] == "fuse" and len(doc["predictions"]) == len(rows)
    assert doc["settings"]["fusion"]["c"] == [1, 8] and doc["seconds_per_image"] > 0


def test_pictures_size_and_content(predicted):
    _, out, _ = predicted
    rows = _csv(out / "predictions.csv")
    pics = {r["truth"]: Path(r["picture"]) for r in rows}
    sizes = {Image.open(Path(r["picture"])).size for r in rows}
    good = Image.open(pics["good"])
    defect = Image.open(next(p for t, p in pics.items() if t != "good"))
    # 5 panels (input, base, diffusion, fused, ground truth) for a defect; 4 for a normal image (no mask)
    assert defect.size[0] > good.size[0] > 4 * 200 and good.size[1] >= 300 and len(sizes) == 2
    assert good.mode in ("RGB", "RGBA")
    g = np.asarray(good.convert("RGB"), dtype=np.int16)
    d = np.asarray(defect.convert("RGB"), dtype=np.int16)[:, : g.shape[1]]
    assert np.abs(g - d).mean() > 5  # not the same picture
    # the heatmap panels are coloured (jet), not grey
    assert (np.abs(g[..., 0] - g[..., 2]) > 60).mean() > 0.05


def test_picture_names_are_unique():
    paths = [Path("a/test/good/000.png"), Path("a/test/hole/000.png"), Path("b/test/good/000.png"), Path("x/1.png")]
    names = picture_names(paths)
    assert len(set(names)) == 4 and names[3].endswith("1.png") and all(n.endswith(".png") for n in names)


def test_base_only_without_diffusion_model(full_run, tiny_data, cli, tmp_path):
    s = RunStore(full_run)
    cur = s.current_keys
    for stage in ("train_diff", "infer_diff", "fuse"):
        cur.pop(stage, None)
    s.set_attr(current=cur)
    img = tiny_data / "weave" / "test" / "good" / "000.png"
    res = cli("predict", "--run", full_run, img, "--out", tmp_path / "o", "--no-pictures")
    assert "no trained diffusion model" in res.output and "drdc train-diff" in res.output
    row = _csv(tmp_path / "o" / "predictions.csv")[0]
    assert float(row["score"]) == pytest.approx(_stored_scores(full_run, "base")["weave/test/good/000.png"], rel=1e-5)
    assert not (tmp_path / "o" / "pictures").exists()


def test_no_base_model_names_the_command(tiny_data, cli, tmp_path):
    run = tmp_path / "r.zarr"
    cli("index", "--data", tiny_data, "--run", run, "--image-size", "64")
    res = cli("predict", "--run", run, tiny_data / "disc" / "test" / "good" / "000.png", code=1)
    assert "drdc train-base" in res.output and "Traceback" not in res.output


def test_other_size_and_mode_is_resized_like_index(full_run, tiny_data, cli, tmp_path):
    src = Image.open(tiny_data / "grain" / "test" / "good" / "000.png")
    folder = tmp_path / "new"
    folder.mkdir()
    src.convert("L").resize((150, 110)).save(folder / "gray.png")
    src.convert("RGBA").resize((128, 128)).save(folder / "rgba.png")
    res = cli("predict", "--run", full_run, folder, "--out", tmp_path / "o")
    rows = _csv(tmp_path / "o" / "predictions.csv")
    assert [Path(r["path"]).name for r in rows] == ["gray.png", "rgba.png"]
    assert all(r["category"] == "" and np.isfinite(float(r["score"])) for r in rows)
    assert "unknown" in res.output
    # --category names the category; a new image gets a content id, so two calls give the same score
    a = cli("predict", "--run", full_run, folder / "rgba.png", "--category", "grain", "--out", tmp_path / "a",
            "--no-pictures")
    b = cli("predict", "--run", full_run, folder / "rgba.png", "--category", "grain", "--out", tmp_path / "b",
            "--no-pictures")
    ra, rb = _csv(tmp_path / "a" / "predictions.csv")[0], _csv(tmp_path / "b" / "predictions.csv")[0]
    assert ra["category"] == "grain" and ra["score"] == rb["score"] and "grain" in a.output + b.output


@pytest.mark.parametrize("case", ["unknown_run", "empty_folder", "not_image", "corrupt", "missing", "bad_category",
                                  "bad_gamma"])
def test_bad_input_is_one_clear_line(case, full_run_pristine, tiny_data, cli, tmp_path):
    img = tiny_data / "disc" / "test" / "good" / "000.png"
    run, args, code, needle = full_run_pristine, [img], 1, ""
    if case == "unknown_run":
        run, needle = tmp_path / "nope.zarr", "no run store"
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("x")
        args, needle = [tmp_path / "empty"], "holds no image files"
    elif case == "not_image":
        (tmp_path / "a.txt").write_text("x")
        args, needle = [tmp_path / "a.txt"], "not an image file"
    elif case == "corrupt":
        (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
        args, needle = [tmp_path / "bad.png"], "bad.png"
    elif case == "missing":
        args, needle = [tmp_path / "ghost.png"], "no such file"
    elif case == "bad_category":
        args, code, needle = [img, "--category", "teapot"], 2, "--category"
    elif case == "bad_gamma":
        args, code, needle = [img, "--gamma", "2"], 2, "--gamma"
    res = cli("predict", "--run", run, *args, code=code)
    assert needle in res.output and "Traceback" not in res.output
    assert not any(tmp_path.glob("**/predictions.csv"))


def test_collect_images_skips_masks_and_hidden(tiny_data):
    files = collect_images([tiny_data / "disc"])
    assert files and not any("ground_truth" in f.parts for f in files)
    n_train = len(list((tiny_data / "disc" / "train" / "good").iterdir()))
    assert len(files) == n_train + TINY.n_test_good + TINY.n_test_defect


def test_demo_pictures_one_normal_one_defect_per_category(full_run, tmp_path):
    from drdc_cli.demo import demo_pictures

    pics = demo_pictures(RunStore(full_run), tmp_path / "demo", "cpu", progress=False)
    assert pics == tmp_path / "demo" / "pictures"
    rows = _csv(tmp_path / "demo" / "predictions.csv")
    cats = RunStore(full_run).current("index").attrs["categories"]
    assert sorted((r["category"], r["truth"] == "good") for r in rows) == sorted(
        (c, g) for c in cats for g in (True, False))
    assert all(r["verdict"] in ("normal", "anomalous") for r in rows)  # calibrated first
    assert len(list(pics.glob("*_mask.png"))) == len(rows) == len(list(pics.glob("*.png"))) // 2


def test_the_demo_pictures_the_diffusion_map_even_when_tune_chose_the_base_map(full_run, cli):
    """With gamma 0 the fusion reads no diffusion map; the demo's predictor still computes it for the pictures
    (shown_only), and H_out and the scores stay those of the base map."""
    from stages.apps.predict.predictor import Predictor

    cli("fuse", "--run", full_run, "--gamma", "0", "-q")
    cli("score", "--run", full_run, "--source", "fuse", "-q")
    store = RunStore(full_run)
    index = store.current("index")
    rec = np.array([i for i, r in enumerate(index.attrs["records"]) if r["split"] == "test"][:3])
    images = index.array("images").get_orthogonal_selection((rec,))
    plain, shown = Predictor(store, "cpu").run(images, rec), Predictor(store, "cpu", show_diffusion=True).run(images, rec)
    assert plain.h_st is None and not plain.shown_only
    assert shown.shown_only and shown.h_st is not None and shown.h_st.shape == shown.h_out.shape
    assert np.array_equal(plain.h_out, shown.h_out) and np.array_equal(plain.scores, shown.scores)
    assert np.ptp(shown.h_st) > 0
