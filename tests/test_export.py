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
from stages.apps.predict.loop import predict
from stages.apps.predict.predictor import Predictor

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
    from stages.apps.export.check import check

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
    from stages.apps.export.check import check

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
    from stages.apps.export.folder import export

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



# -- infer.py reads images as drdc does, refuses bad files one line each, and agrees with predict per image kind --
def _kinds(src: Path, folder: Path) -> list[Path]:
    """The image kinds predict accepts (tests/test_images.py, tests/test_predict.py), made from one test image:
    every PIL mode, 16-bit and float grayscale, bilevel, palette with transparency, CMYK JPEG, an EXIF-rotated
    JPEG, other aspects and sizes, every suffix."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.open(src).convert("RGB")
    g = np.asarray(rgb.convert("L"), dtype=np.float64)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": drdc reads the pixels as stored, so must infer.py
    made = {
        "rgb.png": rgb, "gray.png": rgb.convert("L"), "la.png": rgb.convert("LA"), "rgba.png": rgb.convert("RGBA"),
        "palette.png": rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
        "bilevel.png": rgb.convert("1"), "gray16.png": Image.fromarray((g * 257).astype(np.uint16)),
        "int32.tif": Image.fromarray((g * 100).astype(np.int32)), "float.tif": Image.fromarray(g.astype(np.float32)),
        "cmyk.jpg": rgb.convert("CMYK"), "wide.jpeg": rgb.resize((96, 40)), "tall.bmp": rgb.resize((30, 80)),
        "big.webp": rgb.resize((300, 300)), "exif.jpg": rgb.resize((64, 48)),
    }
    out = []
    for name, img in made.items():
        kw = {"exif": exif} if name == "exif.jpg" else {"transparency": 0} if name == "palette.png" else {}
        img.save(folder / name, **kw)
        out.append(folder / name)
    return out


def _infer_module(dest: Path):
    spec = importlib.util.spec_from_file_location("infer_example", dest / "infer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("resize", ["squash", "pad", "center-crop"])
def test_infer_reads_every_image_kind_as_drdc_does(exported, tiny_data, tmp_path, resize):
    """The array infer.py feeds the graph is drdc's (stages.data.images.load_rgb / 255), bit for bit, and so is
    the part of it that shows the image."""
    from stages.data.geometry import valid as shown
    from stages.data.images import load_rgb

    infer = _infer_module(exported[1])
    files = _kinds(sorted((tiny_data / "disc" / "test").rglob("*.png"))[0], tmp_path / "kinds")
    for f in files:
        x, valid = infer.preprocess(f, 64, resize)
        want, (w, h) = load_rgb(f, 64, resize)
        assert np.array_equal(x, want.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)), f.name
        assert np.array_equal(valid, shown(w, h, 64, resize) if resize == "pad" else np.ones((64, 64), bool)), f.name


def _bad_files(folder: Path, good: Path) -> dict[str, Path]:
    """Files infer.py and predict must refuse, one line each."""
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    files = {"empty": folder / "empty.png", "text": folder / "text.png", "truncated": folder / "cut.png",
             "oversized": folder / "huge.png", "missing": folder / "gone.png", "not an image file": folder / "a.txt"}
    files["empty"].write_bytes(b"")
    files["text"].write_text("not an image")
    files["truncated"].write_bytes(data[: len(data) // 3])
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)  # a header that claims 400 megapixels
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    files["oversized"].write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    files["not an image file"].write_text("x")
    return files


def test_infer_refuses_bad_files_one_line_each_and_scores_the_others_as_predict(exported, tiny_data, tmp_path):
    """A batch of every image kind between bad files (empty, text, truncated, oversized, missing, not an image):
    infer.py (torch's draws) and drdc predict refuse the same files, each in one line naming it, go on with the
    others, exit 1, and give the same scores for every kind."""
    from typer.testing import CliRunner

    from drdc_cli.app import app, register_commands

    run, dest, _ = exported
    src = sorted((tiny_data / "disc" / "test").rglob("*.png"))[0]
    kinds = _kinds(src, tmp_path / "kinds")
    bad = _bad_files(tmp_path / "bad", src)
    inputs = [bad["empty"], *kinds[:7], bad["text"], bad["truncated"], bad["missing"], *kinds[7:],
              bad["oversized"], bad["not an image file"]]
    res = subprocess.run([sys.executable, str(dest / "infer.py"), *map(str, inputs), "--category", "disc"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == len(bad) + 1 and all(str(bad[k]) in " ".join(lines) for k in bad), res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["path"] for r in rows] == [str(f) for f in kinds]
    register_commands()
    pred = CliRunner().invoke(app, ["predict", "--run", str(run), *map(str, inputs), "--category", "disc",
                                    "--out", str(tmp_path / "p"), "--no-pictures"])
    said = [ln for ln in pred.stderr.splitlines() if ln.startswith("error:")]
    assert pred.exit_code == 1 and len(said) == len(lines), pred.stderr
    for ours, theirs in zip(sorted(lines[:-1]), sorted(said[:-1])):  # the same file, the same reason
        assert ours.removesuffix("; skipped") == theirs.removesuffix("; skipped"), (ours, theirs)
    want = {r["path"]: float(r["score"]) for r in csv.DictReader((tmp_path / "p" / "predictions.csv").open())}
    for r in rows:
        assert float(r["score"]) == pytest.approx(want[r["path"]], rel=1e-4), r


def test_infer_never_replaces_a_map_file(exported, tiny_data, tmp_path):
    _, dest, _ = exported
    src = sorted((tiny_data / "disc" / "test").rglob("*.png"))[0]
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / f"0_{src.stem}.npy").write_bytes(b"mine")
    res = subprocess.run([sys.executable, str(dest / "infer.py"), str(src), "--base-only", "--maps",
                          str(tmp_path / "maps")], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and "--overwrite" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert (tmp_path / "maps" / f"0_{src.stem}.npy").read_bytes() == b"mine"
