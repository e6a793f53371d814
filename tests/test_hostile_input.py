"""Hostile and messy input, table-driven: for each case the exit code, one message line naming the culprit, no
traceback, and a run store that already held results is left exactly as it was.

Rejected cases point `index` (or another stage) at the damaged input with --run set to a store that already holds
complete entries; accepted cases (odd image modes, unicode paths, unsorted --t) must work and are checked for
what they produce.
"""
from __future__ import annotations

import errno
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from stages.store.cache import RunStore

from conftest import TINY_INDEX, copy_run


def _copy(tiny_data: Path, dst: Path) -> Path:
    shutil.copytree(tiny_data / "disc", dst / "disc")
    return dst


def _train(root: Path) -> Path:
    return root / "disc" / "train" / "good"


def _first(folder: Path, pattern: str = "*.png") -> Path:
    return sorted(folder.glob(pattern))[0]


def _replace_first(root: Path, img: Image.Image, **kw) -> Path:
    p = _first(_train(root))
    p.unlink()
    p = p.with_suffix(".png")
    img.save(p, **kw)
    return p


def _mask(root: Path) -> Path:
    return sorted((root / "disc" / "ground_truth").rglob("*_mask.png"))[0]


# --- dataset damage: each returns the text the error line must contain ---------------------------------------
def missing_root(root: Path) -> str:
    shutil.rmtree(root)
    return f"{root}: dataset root does not exist"


def empty_root(root: Path) -> str:
    shutil.rmtree(root / "disc")
    return "no category folders found"


def unknown_layout(root: Path) -> str:
    shutil.move(root / "disc" / "train" / "good", root / "disc" / "train" / "normal")
    return "no train/good (MVTec-AD), train/ok (BTAD) or good/ (folder layout) folder"


def no_train_images(root: Path) -> str:
    for p in _train(root).iterdir():
        p.unlink()
    return "category 'disc' has no training images"


def non_image_file(root: Path) -> str:
    (root / "disc" / "test" / "good" / "notes.txt").write_text("hello")
    return "notes.txt: not an image file"


def truncated_png(root: Path) -> str:
    p = _first(_train(root))
    p.write_bytes(p.read_bytes()[:120])
    return f"{p.name}: cannot decode image"


def truncated_jpeg(root: Path) -> str:
    p = _train(root) / "zz.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(p, quality=90)
    p.write_bytes(p.read_bytes()[:300])
    return "zz.jpg: cannot decode image"


def zero_byte(root: Path) -> str:
    (_train(root) / "empty.png").write_bytes(b"")
    return "empty.png: not an image"


def fake_png(root: Path) -> str:
    (_train(root) / "fake.png").write_text("<html>not a png</html>")
    return "fake.png: not an image"


def huge_header(root: Path) -> str:
    Image.new("1", (20000, 20000)).save(_train(root) / "huge.png")  # 400 MP in a tiny file
    return "huge.png: image is larger than the 100,000,000-pixel limit"


def mask_wrong_size(root: Path) -> str:
    m = _mask(root)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(m)
    return m.name


def mask_missing(root: Path) -> str:
    _mask(root).unlink()
    return "defect image has no mask"


def mask_corrupt(root: Path) -> str:
    m = _mask(root)
    m.write_bytes(m.read_bytes()[:50])
    return m.name


def symlink_loop(root: Path) -> str:
    (_train(root) / "loop.png").symlink_to("loop.png")
    return "loop.png"


def folder_in_image_folder(root: Path) -> str:
    (_train(root) / "more").mkdir()
    return "more: unexpected folder inside an image folder"


def tampered_record(root: Path) -> str:
    return "recorded path leaves the dataset root"


@dataclass(frozen=True)
class Case:
    name: str
    damage: Callable[[Path], str]
    code: int = 1


REJECTED = [Case(f.__name__, f) for f in (
    missing_root, empty_root, unknown_layout, no_train_images, non_image_file, truncated_png, truncated_jpeg,
    zero_byte, fake_png, huge_header, mask_wrong_size, mask_missing, mask_corrupt, symlink_loop,
    folder_in_image_folder)]


def _snapshot(run: Path) -> dict[str, str]:
    """Hash of every file of a store except lock files (which record their last holder)."""
    return {p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def _one_line(res) -> str:
    lines = [ln for ln in res.stderr.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    assert len(lines) == 1, res.output
    assert "Traceback" not in res.output
    return lines[0]


@pytest.fixture(scope="module")
def existing(full_run_pristine, tmp_path_factory) -> Path:
    """A store holding complete results of every stage, which no rejected case may change."""
    return copy_run(full_run_pristine, tmp_path_factory.mktemp("existing") / "r.zarr")


@pytest.mark.parametrize("case", REJECTED, ids=lambda c: c.name)
def test_rejected_dataset(case, tiny_data, existing, tmp_path, cli):
    root = _copy(tiny_data, tmp_path / "data")
    needle = case.damage(root)
    before = _snapshot(existing)
    res = cli("index", "--data", root, "--run", existing, *TINY_INDEX, code=case.code)
    assert needle in _one_line(res)
    assert _snapshot(existing) == before


# --- accepted oddities -------------------------------------------------------------------------------------------
def _odd(mode: str) -> tuple[Image.Image, str]:
    """A 64x64 left-to-right grey ramp in an odd mode, and the file suffix that can hold that mode."""
    ramp = np.tile(np.linspace(0, 1, 64), (64, 1))
    grey = Image.fromarray((ramp * 255).astype(np.uint8))
    if mode == "I;16":
        return Image.fromarray((ramp * 65535).astype(np.uint16)), ".png"
    if mode == "P":
        return grey.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=64), ".png"
    if mode == "CMYK":
        return grey.convert("CMYK"), ".jpg"  # PNG cannot hold CMYK; JPEG can
    return grey.convert(mode), ".png"


@pytest.mark.parametrize("mode", ["I;16", "P", "CMYK", "RGBA", "L", "LA", "1"])
def test_odd_image_modes_are_decoded(mode, tiny_data, tmp_path, cli):
    root = _copy(tiny_data, tmp_path / "data")
    img, suffix = _odd(mode)
    img.save(_train(root) / f"odd{suffix}")
    cli("index", "--data", root, "--run", tmp_path / "r.zarr", *TINY_INDEX)
    index = RunStore(tmp_path / "r.zarr").current("index")
    i = next(i for i, r in enumerate(index.attrs["records"]) if r["path"].endswith(f"odd{suffix}"))
    x = index.array("images")[i].astype(np.float64)
    assert x.shape == (64, 64, 3)
    assert np.allclose(x[..., 0], x[..., 1], atol=3) and np.allclose(x[..., 1], x[..., 2], atol=3)
    assert x[:, -4:].mean() - x[:, :4].mean() > 200  # the ramp survives (16-bit scaled, not clipped to white)


def test_unicode_and_spaces_in_paths(tiny_data, tmp_path, cli):
    root = tmp_path / "dätä sét"
    shutil.copytree(tiny_data / "disc", root / "dïsc ünïcode")
    cli("index", "--data", root, "--run", tmp_path / "rün 1.zarr", *TINY_INDEX)
    assert RunStore(tmp_path / "rün 1.zarr").current("index").attrs["categories"] == ["dïsc ünïcode"]


def test_non_binary_mask_is_binarised_and_extra_mask_reported(tiny_data, tmp_path, cli):
    root = _copy(tiny_data, tmp_path / "data")
    m = _mask(root)
    a = np.asarray(Image.open(m)).astype(np.float64)
    Image.fromarray((a / a.max() * 200).astype(np.uint8)).save(m)  # 0/200 instead of 0/255
    (m.parent / "ghost_mask.png").write_bytes(m.read_bytes())
    res = cli("index", "--data", root, "--run", tmp_path / "r.zarr", *TINY_INDEX)
    assert "1 masks belong to no image (ignored), e.g. disc/ground_truth/" in res.output and "ghost_mask.png" in res.output
    masks = RunStore(tmp_path / "r.zarr").current("index").array("masks")[:]
    assert set(np.unique(masks)) <= {0, 1} and masks.sum() > 0


# --- the store and the environment -------------------------------------------------------------------------
def test_store_from_a_future_schema(existing, tmp_path, cli):
    run = copy_run(existing, tmp_path / "future.zarr")
    meta = json.loads((run / "zarr.json").read_text())
    meta["attributes"]["drdc_schema"] = 99
    (run / "zarr.json").write_text(json.dumps(meta))
    before = _snapshot(run)
    res = cli("infer-base", "--run", run, code=1)
    assert "written by a newer drdc (schema 99" in _one_line(res)
    assert _snapshot(run) == before


def test_run_path_is_a_file_or_foreign_folder(tmp_path, tiny_data, cli):
    f = tmp_path / "file.zarr"
    f.write_text("x")
    assert "exists and is not a drdc run store" in _one_line(cli("index", "--data", tiny_data, "--run", f, code=1))
    d = tmp_path / "photos"
    d.mkdir()
    (d / "a.jpg").write_text("x")
    assert "exists and is not a drdc run store" in _one_line(cli("index", "--data", tiny_data, "--run", d, code=1))
    assert (d / "a.jpg").read_text() == "x"


def test_checkpoint_from_another_config(existing, tmp_path, cli):
    from stages.models.reconstruction import ReconstructionConfig, UniADReconstruction

    run = copy_run(existing, tmp_path / "r.zarr")
    store = RunStore(run)
    ckpt = store.current("train_base").files / "model.pt"
    other = UniADReconstruction(ReconstructionConfig(in_channels=16, feature_size=8, hidden_dim=16, nhead=2,
                                                     dim_feedforward=32, num_encoder_layers=1, num_decoder_layers=1,
                                                     neighbor_size=3))
    torch.save(other.state_dict(), ckpt)
    shutil.rmtree(store.current("infer_base").path)  # make infer-base run again and load the checkpoint
    res = cli("infer-base", "--run", run, code=1)
    line = _one_line(res)
    assert "model.pt: weights do not match the model configuration" in line


def test_pickled_code_in_a_checkpoint_is_refused(existing, tmp_path, cli):
    run = copy_run(existing, tmp_path / "r.zarr")
    store = RunStore(run)
    ckpt = store.current("train_base").files / "model.pt"
    torch.save({"evil": Path("x")}, ckpt)  # an arbitrary object: only weights_only=False would unpickle it
    shutil.rmtree(store.current("infer_base").path)
    line = _one_line(cli("infer-base", "--run", run, code=1))
    assert "model.pt: not a loadable weights-only checkpoint (UnpicklingError)" in line


def test_tampered_record_cannot_escape_the_root(existing, tmp_path):
    from stages.data.dataset import resolve_recorded
    from stages.errors import DataError

    for bad in ("../secret.png", "/etc/passwd", "disc/../../x.png", ""):
        with pytest.raises(DataError, match="leaves the dataset root"):
            resolve_recorded(tmp_path, bad)
    assert resolve_recorded(tmp_path, "disc/train/good/000.png") == tmp_path / "disc/train/good/000.png"


def _fail_writes(monkeypatch, err: int, after: int = 0) -> None:
    """Make the n-th and later Zarr chunk writes fail with an OS error (disk full, read-only filesystem)."""
    import zarr.storage

    real = zarr.storage.LocalStore.set
    calls = {"n": 0}

    async def failing(self, key, value):
        calls["n"] += 1
        if calls["n"] > after and not key.endswith("zarr.json"):
            raise OSError(err, os_strerror(err), str(Path(self.root) / key))
        return await real(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", failing)


def os_strerror(err: int) -> str:
    import os

    return os.strerror(err)


@pytest.mark.parametrize("err,needle", [(errno.ENOSPC, "No space left on device"),
                                        (errno.EROFS, "Read-only file system"),
                                        (errno.EACCES, "Permission denied")])
def test_disk_full_or_read_only_store(existing, tmp_path, cli, monkeypatch, err, needle):
    run = copy_run(existing, tmp_path / "r.zarr")
    shutil.rmtree(RunStore(run).current("infer_base").path)
    before = {k: v for k, v in _snapshot(run).items()}
    _fail_writes(monkeypatch, err, after=2)
    line = _one_line(cli("infer-base", "--run", run, code=1))
    assert needle in line and str(run) in line
    monkeypatch.undo()
    after = _snapshot(run)
    assert all(after.get(k) == v for k, v in before.items()), "a complete entry was changed"
    cli("infer-base", "--run", run)  # once space is back, the same command finishes the job
    cli("cache", "verify", "--run", run)


@pytest.mark.parametrize("args,code,needle", [
    (["infer-diff", "--t", "1000"], 2, "--t: must be in [0, 999] (got 1000)"),
    (["infer-diff", "--t", "50,50"], 2, "--t: duplicate value 50"),
    (["infer-diff", "--t", "50,abc"], 2, "--t: expected comma-separated integers"),
    (["infer-diff", "--t", "-5"], 2, "--t"),
    (["infer-diff", "--c", "7"], 2, "--c: 7 does not divide the image size 32"),
    (["infer-diff", "--ns", "1"], 2, "--ns: must be in [2, 4096] (got 1)"),
    (["fuse", "--gamma", "1.5"], 2, "--gamma"),
    (["fuse", "--gamma", "-0.1"], 2, "--gamma"),
    (["fuse", "--filter", "4"], 2, "--filter"),
    (["score", "--source", "nowhere"], 2, "--source"),
    (["train-diff", "--grid", "5", "--size", "32"], 2, "--grid: 5 does not divide"),
    (["extract", "--device", "cuda:3"], 2, "--device"),
    (["report", "--variant", "0000"], 1, "--variant 0000"),
])
def test_bad_options_leave_the_store_alone(existing, cli, args, code, needle):
    before = _snapshot(existing)
    line = _one_line(cli(args[0], "--run", existing, *args[1:], code=code))
    assert needle in line
    assert _snapshot(existing) == before


def test_unsorted_t_is_the_same_request(existing, tmp_path, cli):
    """--t is a set of timesteps run in the reverse process's order: 0,100,50 is 100,50,0, and is cached."""
    run = copy_run(existing, tmp_path / "r.zarr")
    res = cli("infer-diff", "--run", run, "--t", "0,100,50", "--l", "1,2", "--ns", "2", "--c", "1,8", "--init", "paper",
              "--distance", "pixel")
    assert "cached" in res.output


def test_failed_index_leaves_no_new_store_behind(tiny_data, tmp_path, cli):
    root = _copy(tiny_data, tmp_path / "data")
    needle = fake_png(root)
    res = cli("index", "--data", root, "--run", tmp_path / "new.zarr", *TINY_INDEX, code=1)
    assert needle in _one_line(res)
    assert not (tmp_path / "new.zarr").exists()


@pytest.mark.parametrize("where", ["existing_empty", "nested_new"])
def test_failed_index_never_removes_a_folder_the_user_made(where, tiny_data, tmp_path, cli):
    """Roll-back removes only what the command created: the user's own empty folder stays (empty), and new
    parent folders the command made go with the store."""
    root = _copy(tiny_data, tmp_path / "data")
    fake_png(root)
    if where == "existing_empty":
        run = tmp_path / "mine"
        run.mkdir()
    else:
        run = tmp_path / "a" / "b" / "r.zarr"
    cli("index", "--data", root, "--run", run, *TINY_INDEX, code=1)
    if where == "existing_empty":
        assert run.is_dir() and not any(run.iterdir())
    else:
        assert not (tmp_path / "a").exists()
