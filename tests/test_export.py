"""drdc export: the exported graphs, run by onnxruntime (and TorchScript) on the CPU, give predict's maps and
scores; the standalone infer.py needs no drdc. Tolerance: 1e-4 relative on maps and scores (float32 kernels of two
runtimes), 1e-4 on the UNet's eps. The full DRDC graph agrees when infer.py draws its masks and noise with torch's
generators, as drdc does."""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.store.cache import RunStore
from stages.apps.predict import predict
from stages.apps.predictor import Predictor

ort = pytest.importorskip("onnxruntime")


def test_manifest_says_how_to_use_the_graphs(exported):
    run, dest, m = exported
    assert m["graphs"] == {"base": "base.onnx", "drdc": "drdc.onnx", "unet": "unet.onnx"} and m["opset"] == 18
    assert m["preprocess"]["size"] == 64 and m["preprocess"]["resize"] == "squash"
    assert m["keys"] == RunStore(run).current_keys and m["fusion"]["gamma"] == 0.9
    d = m["draws"]  # the tiny run fuses c 1 and 8 over t 100, 50, 0: n0, n1 and one draw per later step
    assert (d["size"], d["n_s"], d["noise_draws_max"]) == (32, 2, 4)
    assert [(e["c"], e["mask_stream"], e["noise_stream"]) for e in d["layout"]] == [(1, 2, 3), (8, 16, 17)]
    assert json.loads((dest / "manifest.json").read_text()) == json.loads(json.dumps(m))


def _example(dest: Path, files: list[Path], cwd: Path, *args: str) -> list[dict]:
    res = subprocess.run([sys.executable, str(dest / "infer.py"), *map(str, files), *args], capture_output=True,
                         text=True, cwd=cwd, timeout=120)
    assert res.returncode == 0, res.stderr
    return list(csv.DictReader(io.StringIO(res.stdout)))


def _outside(tiny_data: Path, root: Path, n: int) -> list[Path]:
    """Copies of n of the disc test images outside the run's data: predict draws their masks and noise from
    their bytes (content ids), as infer.py does, not from their record index."""
    root.mkdir()
    files = sorted((tiny_data / "disc" / "test").rglob("*.png"))[:: 2][:n]
    return [Path(shutil.copyfile(f, root / f"{f.parent.name}_{f.name}")) for f in files]


def test_standalone_example_gives_predicts_drdc_scores_and_maps(exported, tiny_data, tmp_path):
    """export --check: infer.py in a fresh process (torch's draws) against predict, on copies of test images."""
    from stages.apps.export_check import check

    run, dest, _ = exported
    r = check(RunStore(run), dest, 2)
    assert (r.images, r.categories, r.mode) == (2, ["disc", "grain"], "fuse") and r.passed
    assert r.score_error <= 1e-5 and r.map_error <= 1e-5, r
    # numpy's draws: another sample of the masks and noise, so other numbers, of the same size
    files = _outside(tiny_data, tmp_path / "in", 3)
    other = _example(dest, files, tmp_path, "--category", "disc", "--draws", "numpy")
    want = np.array([p.score for p in predict(Predictor(RunStore(run), "cpu"), files, None, "disc", progress=False)])
    got = np.array([float(row["score"]) for row in other])
    assert not np.allclose(got, want, rtol=1e-4) and np.allclose(got, want, rtol=0.5)


def test_export_check_catches_a_broken_export(exported, tmp_path):
    from stages.apps.export_check import check

    run, dest, _ = exported
    broken = Path(shutil.copytree(dest, tmp_path / "broken"))  # a manifest whose pool is not the run's
    m = json.loads((broken / "manifest.json").read_text())
    m["score"]["pool"] = 3
    (broken / "manifest.json").write_text(json.dumps(m))
    bad = check(RunStore(run), broken, 1)
    assert bad.images == 1 and not bad.passed and bad.score_error > 1e-3


def test_example_draws_drdcs_masks_with_torch_and_a_partition_with_numpy(exported):
    from stages.method.masks import grid_masks, image_generator

    _, dest, m = exported
    spec = importlib.util.spec_from_file_location("infer", dest / "infer.py")
    infer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(infer)
    d = m["draws"]
    for image_id in (3, -12345):
        for backend in ("numpy", "torch"):  # torch last: checked against drdc below
            masks, noise = infer.draw(d, image_id, backend)
            assert masks.shape == (2, 2, 32, 32) and noise.shape == (2, 4, 2, 3, 32, 32)
            assert np.all((1 - masks).sum(1) == 1)  # each pixel unknown in exactly one M_i
            assert np.all((1 - masks).sum((2, 3)) == 32 * 32 // 2)  # equal sets
        for n, e in enumerate(d["layout"]):  # torch: drdc's own masks and noise of this image
            want = grid_masks(32, e["c"], 2, image_generator(d["seed"], image_id, e["mask_stream"]))[:, 0]
            assert np.array_equal(masks[n], want.numpy())
            g = image_generator(d["seed"], image_id, e["noise_stream"])
            for k in range(4):  # n0, n1, then one per later step, in the order inpaint draws them
                assert np.array_equal(noise[n, k], torch.randn(2, 3, 32, 32, generator=g).numpy())


def test_drdc_graph_scores_a_batch_as_its_images_one_by_one(exported):
    _, dest, _ = exported
    session = ort.InferenceSession(str(dest / "drdc.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = rng.random((3, 3, 64, 64), dtype=np.float32)
    cat = np.array([0, -1, 1])
    masks = (rng.random((3, 2, 2, 32, 32)) < 0.5).astype(np.float32)
    noise = rng.standard_normal((3, 2, 4, 2, 3, 32, 32), dtype=np.float32)
    batch = session.run(None, {"image": x, "category": cat, "masks": masks, "noise": noise})
    assert [o.shape for o in batch] == [(3, 64, 64)] * 3  # H_out, H_base, H^ST
    for i in range(3):
        one = session.run(None, {"image": x[i:i + 1], "category": cat[i:i + 1], "masks": masks[i:i + 1],
                                 "noise": noise[i:i + 1]})
        for a, b in zip(one, batch):
            assert np.abs(a[0] - b[i]).max() <= 1e-5 * np.abs(b[i]).max()


def test_standalone_example_base_only_gives_predicts_base_scores_and_maps(exported, tiny_data, tmp_path):
    run, dest, _ = exported
    groups = {"disc": sorted((tiny_data / "disc" / "test").rglob("*.png"))[:3],
              "weave": sorted((tiny_data / "weave" / "test").rglob("*.png"))[:2]}
    images, rows = [], []
    for cat, files in groups.items():  # the cpu preset's base map scores an image with its category's Gaussian
        got = _example(dest, files, tmp_path, "--maps", str(tmp_path / cat), "--category", cat, "--base-only")
        rows += [(cat, n, r) for n, r in enumerate(got)]
        images += files
    maps = {}
    ref = predict(Predictor(RunStore(run), "cpu", base_only=True), images, None, progress=False,
                  on_batch=lambda b: maps.update({p.path: p.h_out.copy() for p in b}))
    assert [r["path"] for _, _, r in rows] == [str(p.path) for p in ref]
    for (cat, n, row), p in zip(rows, ref):
        assert float(row["score"]) == pytest.approx(p.score, rel=1e-4), row
        h = np.load(tmp_path / cat / f"{n}_{p.path.stem}.npy")
        assert np.abs(h - maps[p.path]).max() <= 1e-4 * np.abs(maps[p.path]).max()
    # no category: the nearest Gaussian at each position, as predict scores an image of unknown category
    files = _outside(tiny_data, tmp_path / "unknown", 2)
    got = _example(dest, files, tmp_path, "--maps", str(tmp_path / "none"), "--base-only")
    maps = {}
    ref = predict(Predictor(RunStore(run), "cpu", base_only=True), files, None, progress=False,
                  on_batch=lambda b: maps.update({p.path: p.h_out.copy() for p in b}))
    assert ref[0].category is None
    for n, (row, p) in enumerate(zip(got, ref, strict=True)):
        assert float(row["score"]) == pytest.approx(p.score, rel=1e-4), row
        h = np.load(tmp_path / "none" / f"{n}_{p.path.stem}.npy")
        assert np.abs(h - maps[p.path]).max() <= 1e-4 * np.abs(maps[p.path]).max()


def test_unet_graph_gives_the_unets_eps_at_any_batch(exported):
    from stages.pipeline.trained import load_unet

    run, dest, _ = exported
    unet = load_unet(RunStore(run).current("train_diff"), torch.device("cpu")).eval()
    session = ort.InferenceSession(str(dest / "unet.onnx"), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        g = torch.Generator().manual_seed(b)
        x, cond = torch.randn(b, 3, 32, 32, generator=g), torch.randn(b, 3, 32, 32, generator=g)
        t = torch.randint(0, 1000, (b,), generator=g)
        (eps,) = session.run(None, {"x_t": x.numpy(), "t": t.numpy(), "cond": cond.numpy()})
        with torch.no_grad():
            want = unet(x, cond, t).numpy()
        assert np.abs(eps - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def test_torchscript_export_matches_the_onnx_graph(exported, tmp_path):
    from stages.apps.export import export

    run, dest, _ = exported
    m = export(RunStore(run), tmp_path / "ts", "torchscript", base_only=True)
    assert m["graphs"] == {"base": "base.pt"} and m["mode"] == "base"
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    cat = np.array([1, -1])  # the residual Gaussians of the cpu preset's base map: a category, and the nearest
    ts = torch.jit.load(str(tmp_path / "ts" / "base.pt"))(torch.from_numpy(x), torch.from_numpy(cat)).detach().numpy()
    (ox,) = ort.InferenceSession(str(dest / "base.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"image": x, "category": cat})
    assert np.abs(ts - ox).max() <= 1e-4 * np.abs(ox).max()


def test_export_cli_names_a_bad_format(exported, tmp_path, cli):
    run, _, _ = exported
    res = cli("export", "--run", run, "--out", tmp_path / "x", "--format", "tflite", code=2)
    assert "--format: must be one of onnx, torchscript" in res.stderr and not (tmp_path / "x").exists()

