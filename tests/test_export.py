"""drdc export: the exported graphs, run by onnxruntime (and TorchScript) on the CPU, give predict's maps and
scores; the standalone infer.py needs no drdc. Tolerance: 1e-4 relative on H_base and scores (float32 kernels
of two runtimes), 1e-4 on the UNet's eps."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from stages.store.cache import RunStore
from stages.apps.predict import predict
from stages.apps.predictor import Predictor

from conftest import copy_run

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(full_run_pristine, tmp_path_factory):
    from stages.apps.export import export

    root = tmp_path_factory.mktemp("export")
    run = copy_run(full_run_pristine, root / "r.zarr")
    manifest = export(RunStore(run), root / "onnx", "onnx")
    return run, root / "onnx", manifest


def test_manifest_says_how_to_use_the_graphs(exported):
    run, dest, m = exported
    assert m["graphs"] == {"base": "base.onnx", "unet": "unet.onnx"} and m["opset"] == 18
    assert m["preprocess"]["size"] == 64 and m["preprocess"]["resize"] == "squash"
    assert m["keys"] == RunStore(run).current_keys and m["fusion"]["gamma"] == 0.9
    assert json.loads((dest / "manifest.json").read_text()) == json.loads(json.dumps(m))


def test_standalone_example_gives_predicts_scores_and_maps(exported, tiny_data, tmp_path):
    run, dest, _ = exported
    groups = {"disc": sorted((tiny_data / "disc" / "test").rglob("*.png"))[:3],
              "weave": sorted((tiny_data / "weave" / "test").rglob("*.png"))[:2]}
    images, rows = [], []
    for cat, files in groups.items():  # the cpu preset's base map scores an image with its category's Gaussian
        res = subprocess.run([sys.executable, str(dest / "infer.py"), *map(str, files), "--maps", str(tmp_path / cat),
                              "--category", cat], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert res.returncode == 0, res.stderr
        rows += [(cat, n, r) for n, r in enumerate(csv.DictReader(io.StringIO(res.stdout)))]
        images += files
    maps = {}
    ref = predict(Predictor(RunStore(run), "cpu", base_only=True), images, None, progress=False,
                  on_batch=lambda b: maps.update({p.path: p.h_out.copy() for p in b}))
    assert [r["path"] for _, _, r in rows] == [str(p.path) for p in ref]
    for (cat, n, row), p in zip(rows, ref):
        assert float(row["score"]) == pytest.approx(p.score, rel=1e-4), row
        h = np.load(tmp_path / cat / f"{n}_{p.path.stem}.npy")
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
    assert m["base_inputs"] == ["image", "category"]
    ts = torch.jit.load(str(tmp_path / "ts" / "base.pt"))(torch.from_numpy(x), torch.from_numpy(cat)).detach().numpy()
    (ox,) = ort.InferenceSession(str(dest / "base.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"image": x, "category": cat})
    assert np.abs(ts - ox).max() <= 1e-4 * np.abs(ox).max()


def test_export_cli_names_a_bad_format(exported, tmp_path, cli):
    run, _, _ = exported
    res = cli("export", "--run", run, "--out", tmp_path / "x", "--format", "tflite", code=2)
    assert "--format: must be one of onnx, torchscript" in res.stderr and not (tmp_path / "x").exists()
