"""train-diff, infer-diff, fuse and score on fused maps, end to end on tiny data through the CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.method.anomaly_map import upsample
from stages.store.cache import RunStore
from stages.method.fusion import drdc_map

from conftest import TINY_DIFF, TINY_INFER, copy_run

TINY_DIFF, INFER = TINY_DIFF, TINY_INFER  # noqa: PLW0127  (short local names)


def _heat(run, c: int) -> np.ndarray:
    s = RunStore(run)
    e = next(e for e in s.entries() if e.stage == "infer_diff" and e.params["c"] == c and e.is_complete)
    return e.array("heatmaps")[:]


@pytest.fixture(scope="module")
def diff_run(full_run_pristine, tmp_path_factory):
    return copy_run(full_run_pristine, tmp_path_factory.mktemp("diff") / "r.zarr")


def test_heatmaps_shape_and_values(diff_run):
    h = _heat(diff_run, 8)
    n_test = RunStore(diff_run).current("infer_base").array("record").shape[0]
    assert h.shape == (n_test, 3, 2, 32, 32) and h.dtype == np.float16
    assert np.isfinite(h).all() and (h >= 0).all() and h.max() > 0


def test_cached_c_is_not_recomputed_and_new_c_leaves_it_alone(diff_run, cli):
    before = _heat(diff_run, 1)
    res = cli("infer-diff", "--run", diff_run, *INFER, "--c", "1,8")
    assert "cached" in res.output
    res = cli("infer-diff", "--run", diff_run, *INFER, "--c", "1,4,8")
    assert "c=1,8 cached" in res.output
    assert np.array_equal(_heat(diff_run, 1), before)
    assert _heat(diff_run, 4).shape == before.shape


def test_same_command_twice_is_bit_identical(diff_run, cli, tmp_path):
    import shutil

    other = tmp_path / "copy.zarr"
    shutil.copytree(diff_run, other)
    for e in list(RunStore(other).entries()):
        if e.stage == "infer_diff":
            shutil.rmtree(e.path)
    cli("infer-diff", "--run", other, *INFER, "--c", "1,8")
    assert np.array_equal(_heat(other, 8), _heat(diff_run, 8))


def test_fuse_equals_eq_17_19_on_the_cached_arrays(diff_run, cli):
    cli("infer-diff", "--run", diff_run, *INFER, "--c", "1,8")
    res = cli("fuse", "--run", diff_run, "--c", "1,8", "--t", "100,0", "--l", "2", "--gamma", "0.7", "--filter", "5")
    assert "✓ fuse" in res.output
    s = RunStore(diff_run)
    fused = s.current("fuse")
    base = s.current("infer_base")
    c_feat = s.current("extract").attrs["channels"]
    # t list (100, 50, 0): indices 0 and 2; l list (1, 2): index 1
    sel = np.concatenate([_heat(diff_run, c)[:, [0, 2]][:, :, [1]].reshape(-1, 2, 32, 32) for c in (1, 8)], 1)
    k = sel.shape[0]
    h_diff = upsample(torch.from_numpy(sel.astype(np.float32)).flatten(0, 1), 64).view(k, 4, 64, 64)
    expect = drdc_map(upsample(torch.from_numpy(base.array("h_base")[:]), 64), h_diff, 0.7, 5, c_feat, 3)
    assert np.allclose(fused.array("maps")[:], expect.numpy(), atol=1e-6)


def test_score_fused_and_report_side_by_side(diff_run, cli):
    cli("fuse", "--run", diff_run, "--c", "1,8")
    cli("score", "--run", diff_run, "--source", "base")
    base_key = RunStore(diff_run).current("score").key
    cli("score", "--run", diff_run, "--source", "fuse")
    fused_key = RunStore(diff_run).current("score").key
    assert fused_key != base_key
    res = cli("report", "--run", diff_run, "--variant", base_key, "--variant", fused_key)
    assert f"base = score {base_key}" in res.output and f"fuse = score {fused_key}" in res.output


def test_fuse_names_the_missing_heatmaps(diff_run, cli, tmp_path):
    import shutil

    run = copy_run(diff_run, tmp_path / "r.zarr")
    for e in list(RunStore(run).entries()):  # c = 4: a grid size the UNet was trained on, not made yet
        if e.stage == "infer_diff" and e.params.get("c") == 4:
            shutil.rmtree(e.path)
    res = cli("fuse", "--run", run, "--c", "1,4", code=1)
    assert "no cached diffusion heatmaps for c=4" in res.output and "drdc infer-diff --run" in res.output
    res = cli("fuse", "--run", run, "--c", "1,2", code=2)  # one it was not: no infer-diff line could make it
    assert "--grid 1,4,8" in res.stderr and "drdc infer-diff" not in res.stderr


@pytest.mark.parametrize("args,needle", [
    (["infer-diff", "--t", "1000"], "--t: must be in [0, 999] (got 1000)"),
    (["infer-diff", "--t", "50,50"], "--t: duplicate value 50"),
    (["infer-diff", "--t", "50,x"], "--t: expected comma-separated integers"),
    (["infer-diff", "--c", "7"], "--c: 7 does not divide the image size 32"),
    (["infer-diff", "--ns", "1"], "--ns"),
    (["infer-diff", "--l", "3"], "--l"),
    (["fuse", "--gamma", "1.5"], "--gamma"),
    (["fuse", "--filter", "40"], "--filter"),
    (["train-diff", "--steps", "0"], "--steps"),
    (["train-diff", "--grid", "5", "--size", "32"], "--grid: 5 does not divide"),
])
def test_bad_diffusion_options(diff_run, cli, args, needle):
    res = cli(args[0], "--run", diff_run, *args[1:], code=None)
    assert res.exit_code in (1, 2) and needle in res.output and "Traceback" not in res.output


def test_fuse_ablation_switches_change_the_map(diff_run, cli):
    cli("fuse", "--run", diff_run, "--c", "1,8")
    full = RunStore(diff_run).current("fuse").array("maps")[:]
    cli("fuse", "--run", diff_run, "--c", "1,8", "--no-spatio-temporal")
    e = RunStore(diff_run).current("fuse")
    assert e.params["t"] == [0] and e.params["l"] == [1]
    assert not np.array_equal(e.array("maps")[:], full)
    cli("fuse", "--run", diff_run, "--c", "1,8", "--multiscale-base")
    assert not np.array_equal(RunStore(diff_run).current("fuse").array("maps")[:], full)


@pytest.mark.parametrize("c", ["2", "16", "1,2"])
def test_a_grid_size_the_unet_never_saw_is_refused_in_one_line(diff_run, cli, c):
    """The tiny UNet was trained on grid sizes 1, 4, 8 (train-diff --grid): any other c (2 and 16 divide its 32 px)
    is refused naming --c, the value and the trained sizes, and nothing is written."""
    before = sorted(p.name for p in (diff_run / "infer_diff").iterdir())
    res = cli("infer-diff", "--run", diff_run, *INFER, "--c", c, code=2)
    line = res.stderr.strip()
    bad = next(v for v in c.split(",") if v not in ("1", "4", "8"))
    assert len(line.splitlines()) == 1 and "--c" in line and f"got {bad}" in line and "--grid 1,4,8" in line, line
    assert sorted(p.name for p in (diff_run / "infer_diff").iterdir()) == before
