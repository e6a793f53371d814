"""Stale is never reused: a change to the dataset's files, a stage parameter, the backbone weights or the store
schema gives new keys downstream, and an entry built from a superseded upstream entry is refused."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stages.store.cache import RunStore

from conftest import TINY_EXTRACT, TINY_INDEX


@pytest.fixture()
def indexed(tiny_data, tmp_path, cli) -> tuple[Path, Path, dict]:
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "grain", data / "grain")
    run = tmp_path / "r.zarr"
    cli("index", "--data", data, "--run", run, *TINY_INDEX)
    cli("extract", "--run", run, *TINY_EXTRACT)
    return data, run, RunStore(run).current_keys


def _add(data: Path) -> None:
    src = sorted((data / "grain" / "train" / "good").glob("*.png"))[0]
    shutil.copy(src, src.with_name("zz_added.png"))


def _remove(data: Path) -> None:
    sorted((data / "grain" / "train" / "good").glob("*.png"))[-1].unlink()


def _modify(data: Path) -> None:
    p = sorted((data / "grain" / "test" / "good").glob("*.png"))[0]
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(p)


@pytest.mark.parametrize("change", [_add, _remove, _modify], ids=["file added", "file removed", "file modified"])
def test_dataset_change_gives_new_keys_downstream(indexed, cli, change):
    data, run, before = indexed
    change(data)
    cli("index", "--data", data, "--run", run, *TINY_INDEX)
    assert RunStore(run).current_keys["index"] != before["index"]
    res = cli("train-base", "--run", run, code=1)  # the features were extracted from the old index
    assert "rerun `drdc extract --run" in res.output
    cli("extract", "--run", run, *TINY_EXTRACT)
    assert RunStore(run).current_keys["extract"] != before["extract"]


def test_parameter_change_gives_a_new_key_and_the_old_one_is_kept(indexed, cli):
    _, run, before = indexed
    cli("extract", "--run", run, "--feature-size", "4")
    assert RunStore(run).current_keys["extract"] != before["extract"]
    res = cli("extract", "--run", run, *TINY_EXTRACT)  # back to the first parameters: cached, not recomputed
    assert "cached" in res.output and RunStore(run).current_keys["extract"] == before["extract"]


def test_other_backbone_weights_give_a_new_key(indexed, cli, tmp_path):
    from stages.models.backbone import load_backbone

    _, run, before = indexed
    net = load_backbone("tf_efficientnet_lite0", None, 8)
    state = {k: v.clone() for k, v in net.body.state_dict().items()}
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] += 1e-3  # the same architecture, other weights
    torch.save(state, tmp_path / "w.pt")
    cli("extract", "--run", run, *TINY_EXTRACT, "--weights", tmp_path / "w.pt")
    e = RunStore(run).current("extract")
    assert e.key != before["extract"] and e.params["weights_id"] != net.weights_id


def test_schema_version_change_gives_new_keys(indexed, cli, monkeypatch):
    import stages.store.cache

    _, run, before = indexed
    monkeypatch.setattr(stages.store.cache, "SCHEMA_VERSION", stages.store.cache.SCHEMA_VERSION + 1)
    res = cli("extract", "--run", run, *TINY_EXTRACT)
    assert "cached" not in res.output
    assert RunStore(run).current_keys["extract"] != before["extract"]

