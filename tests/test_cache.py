"""The run store: keys, cached reuse, resume units, freshness of upstream entries, store validation."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from stages.store.cache import SCHEMA_VERSION, RunStore, make_key
from drdc_cli.flags import message
from stages.errors import CacheMissError, Step, StoreError


def _complete(store: RunStore, stage: str, params: dict, inputs: dict) -> str:
    e, cached = store.begin(stage, params, inputs)
    assert not cached
    e.complete()
    store.set_current(e)
    return e.key


def test_key_depends_on_params_inputs_and_is_order_free():
    k = make_key("extract", {"a": 1, "b": [1, 2]}, {"index": "x"})
    assert k == make_key("extract", {"b": [1, 2], "a": 1}, {"index": "x"})
    assert k != make_key("extract", {"a": 2, "b": [1, 2]}, {"index": "x"})
    assert k != make_key("extract", {"a": 1, "b": [1, 2]}, {"index": "y"})
    assert k != make_key("train_base", {"a": 1, "b": [1, 2]}, {"index": "x"})


def test_same_params_are_cached_new_params_new_entry(tmp_path):
    s = RunStore(tmp_path / "r.zarr", create=True)
    k1 = _complete(s, "index", {"root": "a"}, {})
    e, cached = s.begin("index", {"root": "a"}, {})
    assert cached and e.key == k1
    k2 = _complete(s, "index", {"root": "b"}, {})
    assert k2 != k1 and s.current("index").key == k2
    assert sorted(x.key for x in s.entries()) == sorted([k1, k2])


def test_partial_entry_is_resumed_by_chunk(tmp_path):
    s = RunStore(tmp_path / "r.zarr", create=True)
    e, _ = s.begin("extract", {"p": 1}, {})
    e.require_array("x", (20, 2), "float32")
    done = e.require_done(20)
    done[0:8] = 1
    done[8:12] = 1  # half a chunk done: the whole chunk is redone so batching stays identical
    e2, cached = RunStore(tmp_path / "r.zarr").begin("extract", {"p": 1}, {})
    assert not cached and e2.key == e.key and e2.pending(20) == [(8, 16), (16, 20)]
    assert e2.progress() == (12, 20)


def test_stale_upstream_is_refused_with_the_command(tmp_path):
    s = RunStore(tmp_path / "r.zarr", create=True)
    i1 = _complete(s, "index", {"root": "a"}, {})
    _complete(s, "extract", {"b": 1}, {"index": i1})
    assert s.current("extract").inputs == {"index": i1}
    _complete(s, "index", {"root": "changed"}, {})
    with pytest.raises(CacheMissError) as info:
        s.current("extract")
    assert info.value.steps == [Step("extract", s.name, {"b": 1})]  # the fix, as data: stage, run, parameters
    assert "drdc" not in str(info.value)  # the library speaks no command line ...
    assert "rerun `drdc extract --run" in message(info.value)  # ... the CLI renders it


def test_missing_and_incomplete_entries(tmp_path):
    s = RunStore(tmp_path / "r.zarr", create=True)
    with pytest.raises(CacheMissError) as info:
        s.current("extract")
    assert re.search(r"no extract result .* run `drdc extract --run", message(info.value))
    assert info.value.steps == [Step("extract", s.name)]  # the bare step: the preset's defaults
    e, _ = s.begin("index", {}, {})
    s.set_current(e)  # current but still running (a killed run)
    with pytest.raises(CacheMissError, match="not complete"):
        s.current("index")


def test_store_validation(tmp_path):
    with pytest.raises(StoreError, match="no run store here"):
        RunStore(tmp_path / "none.zarr")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(StoreError, match="not a drdc run store"):
        RunStore(tmp_path / "full", create=True)
    s = RunStore(tmp_path / "future.zarr", create=True)
    s.set_attr(drdc_schema=SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="newer drdc"):
        RunStore(tmp_path / "future.zarr")


def test_arrays_survive_reopen(tmp_path):
    s = RunStore(tmp_path / "r.zarr", create=True)
    e, _ = s.begin("extract", {}, {})
    a = e.require_array("features", (10, 3, 2, 2), "float32")
    a[2:4] = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    e2 = RunStore(tmp_path / "r.zarr").get("extract", e.key)
    assert np.array_equal(e2.array("features")[2:4].ravel(), np.arange(24, dtype=np.float32))
    with pytest.raises(StoreError, match="exists with shape"):
        e2.require_array("features", (11, 3, 2, 2), "float32")
    attrs = json.loads((tmp_path / "r.zarr" / "extract" / e.key / "zarr.json").read_text())["attributes"]
    assert attrs["stage"] == "extract" and attrs["status"] == "running"
