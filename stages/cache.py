"""The run store: one Zarr v3 directory per run, holding every stage's results as keyed entries.

Layout::

    run.zarr/                     root attrs: drdc_schema, drdc_version, created, preset, current{stage: key}
      <stage>/<key>/              attrs: stage, key, params, inputs{stage: key}, status, seed, created, ...
        <array>                   chunked along the image axis (CHUNK images a chunk)
        done                      uint8 per image: data chunks are written first, then their done flags
        files/                    non-array payloads (checkpoints), written atomically

key = sha256(canonical JSON of {stage, params, inputs, schema})[:12]: a changed parameter or a changed upstream
entry gives a new key, so nothing stale is reused. `current` points at the entry each stage last completed
(or found cached); readers get an entry only if it is complete and its inputs are the current ones upstream,
otherwise a CacheMissError naming the command to rerun.
"""
from __future__ import annotations

import json
import hashlib
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr

from . import __version__
from .errors import CacheMissError, StoreError
from .registry import STAGES, hint

SCHEMA_VERSION = 1
CHUNK = 8  # images per chunk: the unit of work, resume and (later) sharding


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def make_key(stage: str, params: dict, inputs: dict[str, str]) -> str:
    payload = {"stage": stage, "params": params, "inputs": inputs, "schema": SCHEMA_VERSION}
    return hashlib.sha256(canonical(payload).encode()).hexdigest()[:12]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Entry:
    """One stage result: a Zarr group plus a files/ folder for non-array payloads."""

    def __init__(self, store: "RunStore", group: zarr.Group):
        self.store = store
        self.group = group

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def stage(self) -> str:
        return self.group.attrs["stage"]

    @property
    def key(self) -> str:
        return self.group.attrs["key"]

    @property
    def params(self) -> dict:
        return self.group.attrs["params"]

    @property
    def inputs(self) -> dict[str, str]:
        return self.group.attrs["inputs"]

    @property
    def status(self) -> str:
        return self.group.attrs["status"]

    @property
    def is_complete(self) -> bool:
        return self.status == "complete"

    @property
    def path(self) -> Path:
        return self.store.path / self.stage / self.key

    @property
    def files(self) -> Path:
        p = self.path / "files"
        p.mkdir(exist_ok=True)
        return p

    def update(self, **attrs: Any) -> None:
        self.group.attrs.update(attrs)

    def array(self, name: str) -> zarr.Array:
        return self.group[name]

    def has(self, name: str) -> bool:
        return name in self.group

    def require_array(self, name: str, shape: tuple[int, ...], dtype: str, chunk: int = CHUNK) -> zarr.Array:
        """Create an image-axis-chunked array, or reopen it (resume) when it exists with the same shape."""
        if name in self.group:
            a = self.group[name]
            if tuple(a.shape) != tuple(shape) or a.dtype != np.dtype(dtype):
                raise StoreError(f"{self.path / name}: exists with shape {a.shape} {a.dtype}, expected {shape} {dtype}")
            return a
        chunks = (min(chunk, max(shape[0], 1)),) + tuple(shape[1:])
        return self.group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)

    def require_done(self, n: int, chunk: int = CHUNK) -> zarr.Array:
        return self.require_array("done", (n,), "uint8", chunk)

    def pending(self, n: int, chunk: int = CHUNK) -> list[tuple[int, int]]:
        """(start, stop) of every chunk with an image not done. Whole chunks are recomputed, so a resumed run
        batches exactly as an uninterrupted one and ends bit-identical."""
        done = self.require_done(n, chunk)[:] if n else np.zeros(0, np.uint8)
        return [(s, min(s + chunk, n)) for s in range(0, n, chunk) if not done[s : s + chunk].all()]

    def progress(self) -> tuple[int, int] | None:
        if "done" not in self.group:
            return None
        d = self.group["done"][:]
        return int(d.sum()), int(d.size)

    def complete(self, **attrs: Any) -> None:
        self.update(**attrs, status="complete", completed=_now())

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


class RunStore:
    """A run store on disk. `create=True` makes a new one if the path does not exist."""

    def __init__(self, path: str | Path, create: bool = False):
        self.path = Path(path).expanduser().absolute()
        self.name = str(path)
        exists = (self.path / "zarr.json").is_file()
        if not exists:
            if not create:
                raise StoreError(f"{self.path}: no run store here; create one with `drdc index --data ROOT --run {path}`")
            if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
                raise StoreError(f"{self.path}: exists and is not a drdc run store; choose another --run")
            try:
                self.root = zarr.open_group(self.path, mode="w")
            except OSError as e:
                raise StoreError(f"{self.path}: cannot create run store ({e.strerror or e})") from None
            self.root.attrs.update(
                drdc_schema=SCHEMA_VERSION, drdc_version=__version__, created=_now(), current={}
            )
            return
        try:
            self.root = zarr.open_group(self.path, mode="a")
        except Exception as e:  # noqa: BLE001 - any zarr failure means the store is unusable
            raise StoreError(f"{self.path}: cannot open run store ({e})") from None
        schema = self.root.attrs.get("drdc_schema")
        if schema is None:
            raise StoreError(f"{self.path}: a Zarr store but not a drdc run store")
        if schema > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: written by a newer drdc (schema {schema}, this drdc reads {SCHEMA_VERSION}); upgrade drdc"
            )

    # -- entries ---------------------------------------------------------------------------------------
    def get(self, stage: str, key: str) -> Entry | None:
        try:
            g = self.root[f"{stage}/{key}"]
        except KeyError:
            return None
        return Entry(self, g)

    def begin(self, stage: str, params: dict, inputs: dict[str, str], seed: int | None = None) -> tuple[Entry, bool]:
        """The entry for these params and inputs: (entry, cached). A complete entry is returned as cached;
        a partial one is reopened to resume; otherwise a new one is created with status 'running'."""
        key = make_key(stage, params, inputs)
        e = self.get(stage, key)
        if e is not None:
            if e.is_complete:
                self.set_current(e)
                return e, True
            e.update(resumed=_now())
            return e, False
        g = self.root.require_group(f"{stage}/{key}")
        g.attrs.update(
            stage=stage, key=key, params=params, inputs=inputs, status="running", seed=seed,
            created=_now(), drdc_version=__version__,
        )
        return Entry(self, g), False

    def set_current(self, entry: Entry) -> None:
        cur = dict(self.root.attrs.get("current", {}))
        cur[entry.stage] = entry.key
        self.root.attrs.update(current=cur)

    def current(self, stage: str) -> Entry:
        """The current complete entry of a stage, checked fresh against the current entries upstream."""
        key = self.root.attrs.get("current", {}).get(stage)
        if key is None:
            raise CacheMissError(f"no {stage} result in {self.name}; run `{hint(stage, self.name)}` first")
        e = self.get(stage, key)
        if e is None or not e.is_complete:
            raise CacheMissError(f"the {stage} result {key} in {self.name} is not complete; rerun `{hint(stage, self.name)}`")
        self.check_fresh(e)
        return e

    def check_fresh(self, e: Entry) -> None:
        """Every input of e is the current entry of its stage (recursively). An input named 'stage@label' is one
        of several entries of a stage (fuse reads one infer-diff entry per c): it must exist, be complete and be
        fresh itself."""
        for name, up_key in e.inputs.items():
            up_stage = name.split("@")[0]
            if "@" in name:
                up = self.get(up_stage, up_key)
                if up is None or not up.is_complete:
                    raise CacheMissError(f"the {e.stage} result {e.key} needs {up_stage} {up_key}, which is gone or "
                                         f"incomplete; rerun `{hint(up_stage, self.name)}`")
                self.check_fresh(up)
                continue
            up = self.current(up_stage)
            if up.key != up_key:
                raise CacheMissError(
                    f"the {e.stage} result {e.key} was computed from {up_stage} {up_key}, but the current "
                    f"{up_stage} is {up.key}; rerun `{hint(e.stage, self.name)}`"
                )

    def entries(self) -> Iterator[Entry]:
        """Every entry, in pipeline order."""
        for stage in STAGES:
            if stage not in self.root:
                continue
            for _, g in sorted(self.root[stage].groups(), key=lambda kv: kv[1].attrs.get("created", "")):
                yield Entry(self, g)

    @property
    def current_keys(self) -> dict[str, str]:
        return dict(self.root.attrs.get("current", {}))

    def set_attr(self, **attrs: Any) -> None:
        self.root.attrs.update(attrs)

    def attr(self, name: str, default: Any = None) -> Any:
        return self.root.attrs.get(name, default)


def atomic_save(write, path: Path) -> None:
    """Write via write(tmp_path) then rename, so a kill mid-write never leaves a truncated file at path."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.time_ns()}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
