"""`drdc ablate` (Table 5): every computed row equals `drdc fuse` with the same switch then `drdc score --source
fuse`; rows the cache cannot answer name commands, and running those commands fills them."""
from __future__ import annotations

import csv
import json
import shlex

import pytest

from stages.apps.ablate import BASE, BASE_MAHALANOBIS, FUSION_OPTIONS, OPTIONS, TABLE5
from stages.store.cache import RunStore
from stages.method.metrics import METRIC_NAMES

from conftest import copy_run


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for cat in a:
        for m in METRIC_NAMES:
            if b[cat][m] is None:
                assert a[cat][m] is None, (cat, m)
            else:
                assert a[cat][m] == pytest.approx(b[cat][m], abs=1e-6), (cat, m)


def _rows(path) -> dict[str, dict]:
    return {r["variant"]: r for r in json.loads(path.read_text())}


def _fuse_and_score(cli, run, *flags) -> dict:
    cli("fuse", "--run", run, "--c", "1,8", *flags, "-q")
    cli("score", "--run", run, "--source", "fuse", "-q")
    return RunStore(run).current("score").attrs["metrics"]


def _run_commands(cli, commands: list[str]) -> None:
    for line in commands:
        args = shlex.split(line.split("   (")[0])
        assert args[0] == "drdc"
        cli(*args[1:], "-q")


@pytest.fixture(scope="module")
def ablated(full_run_pristine, tmp_path_factory):
    from typer.testing import CliRunner

    from drdc_cli.app import app, register_commands

    register_commands()
    tmp = tmp_path_factory.mktemp("abl")
    run = copy_run(full_run_pristine, tmp / "r.zarr")
    res = CliRunner().invoke(app, ["ablate", "--run", str(run), "--csv", str(tmp / "t5.csv"),
                                   "--json", str(tmp / "t5.json"), "-q"])
    assert res.exit_code == 0, res.output
    return run, tmp, res.output


def test_fusion_rows_equal_fuse_then_score(ablated, cli):
    run, tmp, output = ablated
    rows = _rows(tmp / "t5.json")
    s = RunStore(run)
    stored = {e.params["source"]: e.attrs["metrics"] for e in s.entries() if e.stage == "score"}
    _same(rows[BASE_MAHALANOBIS]["metrics"], stored["base"])  # the cpu preset's base map
    _same(rows["DRDC (full)"]["metrics"], stored["fuse"])  # the fixture ran `fuse --c 1,8` then score
    val = {e.params["source"]: e.attrs["val_metrics"] for e in s.entries() if e.stage == "score"}
    _same(rows[BASE_MAHALANOBIS]["validation_metrics"], val["base"])
    _same(rows["DRDC (full)"]["validation_metrics"], val["fuse"])
    _same(rows["w/o spatio-temporal fusion"]["metrics"], _fuse_and_score(cli, run, "--no-spatio-temporal"))
    _same(rows["+ multi-scale base heatmap"]["metrics"], _fuse_and_score(cli, run, "--multiscale-base"))
    assert rows["w/o spatio-temporal fusion"]["fusion"]["t"] == [0] and rows["DRDC (full)"]["fusion"]["l"] == [1, 2]
    for name in ("Table 5", "DRDC (full)", "I-AUROC"):
        assert name in output


def test_fusion_option_rows_equal_fuse_with_the_option_then_score(ablated, cli, tmp_path):
    """The gated row on raw maps is normalised per pixel (the gate reads normalised maps); the image-gamma row
    takes its image scores from H_base alone."""
    run, tmp, _ = ablated
    rows = _rows(tmp / "t5.json")
    assert [v.name for v in FUSION_OPTIONS] == list(rows)[-len(FUSION_OPTIONS):]
    run2 = copy_run(run, tmp_path / "r2.zarr")
    _same(rows["+ high-pass fusion"]["metrics"], _fuse_and_score(cli, run2, "--fusion", "highpass"))
    _same(rows["+ gated fusion"]["metrics"], _fuse_and_score(cli, run2, "--fusion", "gated", "--norm", "pixel"))
    image = _fuse_and_score(cli, run2, "--image-gamma", "0")
    _same(rows["+ image scores from H_base (image gamma 0)"]["metrics"], image)
    base = rows[BASE_MAHALANOBIS]["metrics"]
    assert all(image[c]["i_auroc"] == pytest.approx(base[c]["i_auroc"], abs=1e-6) for c in base)  # H_base's ranking
    assert rows["+ gated fusion"]["fusion"]["norm"] == "pixel" and rows["+ gated fusion"]["fusion"]["fusion"] == "gated"


def test_csv_has_every_category_of_computed_rows(ablated):
    run, tmp, _ = ablated
    rows = list(csv.DictReader((tmp / "t5.csv").open()))
    full = [r for r in rows if r["variant"] == "DRDC (full)"]
    cats = [*RunStore(run).current("index").attrs["categories"], "mean"]
    assert [r["category"] for r in full] == [f"val:{c}" for c in cats] + cats
    assert set(METRIC_NAMES) <= set(rows[0])
    missing = [r for r in rows if r["variant"] == "w/o test-time condition"]
    assert len(missing) == 1 and missing[0]["i_auroc"] == ""


def test_missing_rows_name_commands_that_fill_them(ablated, cli, tmp_path):
    run, tmp, output = ablated
    rows = _rows(tmp / "t5.json")
    ttc, mc = rows["w/o test-time condition"], rows["w/o model condition"]
    assert ttc["metrics"] is None and mc["metrics"] is None
    assert "--no-test-time-condition" in ttc["commands"][0] and ttc["commands"][0] in output
    assert "--no-model-condition" in mc["commands"][0] and len(mc["commands"]) == 3
    run2 = copy_run(run, tmp_path / "r2.zarr")
    _run_commands(cli, [c.replace(str(run), str(run2)) for c in ttc["commands"] + mc["commands"]])
    assert RunStore(run2).current("train_diff").params["model_condition"] is True  # restored
    cli("ablate", "--run", run2, "--json", tmp_path / "t.json", "-q")
    after = _rows(tmp_path / "t.json")
    assert all(after[v.name]["metrics"] is not None for v in TABLE5)
    _same(after["w/o test-time condition"]["metrics"], _fuse_and_score(cli, run2, "--no-test-time-condition"))
    _same(after["DRDC (full)"]["metrics"], rows["DRDC (full)"]["metrics"])
    # model condition off: make the ablated UNet current (cached, instant), fuse + score, compare
    _run_commands(cli, [mc["commands"][0].replace(str(run), str(run2))])
    _same(after["w/o model condition"]["metrics"], _fuse_and_score(cli, run2))


def test_the_eq2_base_row_names_its_commands_and_they_restore_the_current_map(ablated, cli, tmp_path):
    run, tmp, output = ablated
    row = _rows(tmp / "t5.json")[BASE]
    assert row["metrics"] is None and len(row["commands"]) == 2 and "--residual-norm l2" in row["commands"][0]
    run2 = copy_run(run, tmp_path / "r2.zarr")
    before = RunStore(run2).current_keys["infer_base"]
    _run_commands(cli, [c.replace(str(run), str(run2)) for c in row["commands"]])
    assert RunStore(run2).current_keys["infer_base"] == before
    cli("ablate", "--run", run2, "--json", tmp_path / "t.json", "-q")
    after = _rows(tmp_path / "t.json")[BASE]
    cli("infer-base", "--run", run2, "--residual-norm", "l2", "-q")
    cli("score", "--run", run2, "--source", "base", "-q")
    s = RunStore(run2)
    _same(after["metrics"], s.get("score", s.current_keys["score"]).attrs["metrics"])


def test_option_rows_name_commands_that_fill_them(ablated, cli, tmp_path):
    """What drdc's diffusion options add: each missing row names the train-diff / infer-diff lines that make it;
    run, the rows equal fuse (with that start and distance) then score."""
    run, tmp, output = ablated
    rows = _rows(tmp / "t5.json")
    assert [v.name for v in OPTIONS] == list(rows)[-len(OPTIONS) - len(FUSION_OPTIONS):-len(FUSION_OPTIONS)]
    assert rows["DRDC, paper training and start"]["metrics"] is not None  # the fixture's own maps
    want = ["+ start ddad + feature distance", "+ inpaint training + feature distance"]
    for name in want:
        assert rows[name]["metrics"] is None and rows[name]["commands"]
    assert any("--task inpaint" in c for c in rows[want[1]]["commands"])
    run2 = copy_run(run, tmp_path / "r2.zarr")
    _run_commands(cli, [c.replace(str(run), str(run2)) for n in want for c in rows[n]["commands"]])
    cli("ablate", "--run", run2, "--json", tmp_path / "t.json", "-q")
    after = _rows(tmp_path / "t.json")
    for name in [*want, "+ start ddad (no retraining)", "+ inpaint training (start noise)"]:  # pixel maps too
        assert after[name]["metrics"] is not None, name
    _same(after[want[0]]["metrics"], _fuse_and_score(cli, run2, "--init", "ddad", "--distance", "feature"))
    inpaint_cmd = next(c for c in rows[want[1]]["commands"] if "--task inpaint" in c)
    _run_commands(cli, [inpaint_cmd.replace(str(run), str(run2))])  # the inpaint UNet current (cached)
    _same(after[want[1]]["metrics"], _fuse_and_score(cli, run2, "--init", "noise", "--distance", "feature"))


@pytest.mark.parametrize("args,code,needle", [(["--filter", "4"], 2, "--filter"), (["--gamma", "1.5"], 2, "--gamma"),
                                              (["--c", "3"], 0, "--c 3 ")])
def test_bad_options(full_run_pristine, cli, args, code, needle):
    res = cli("ablate", "--run", full_run_pristine, *args, "-q", code=code)
    assert needle in res.output and "Traceback" not in res.output


def test_unknown_run(cli, tmp_path):
    assert "no run store" in cli("ablate", "--run", tmp_path / "x.zarr", code=1).output


def test_table5_reads_the_maps_fuse_would_read(full_run_pristine, cli, tmp_path):
    """With only one grid size cached for the newest start (ddad), the full method's row fuses those maps, as
    `drdc fuse` does, instead of asking for the grid sizes of the older start's maps."""
    from conftest import TINY_INFER, options

    run = copy_run(full_run_pristine, tmp_path / "r.zarr")
    cli("infer-diff", "--run", run, *options(TINY_INFER, "--init", "ddad"), "--c", "4", "-q")
    cli("ablate", "--run", run, "--json", tmp_path / "t5.json", "-q")
    full = _rows(tmp_path / "t5.json")["DRDC (full)"]
    assert full["commands"] == [] and full["fusion"]["init"] == "ddad" and full["fusion"]["c"] == [4]
    _same(full["metrics"], _fuse_and_score_c(cli, run, "4"))


def _fuse_and_score_c(cli, run, c: str) -> dict:
    cli("fuse", "--run", run, "--c", c, "-q")
    cli("score", "--run", run, "--source", "fuse", "-q")
    return RunStore(run).current("score").attrs["metrics"]
