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

Several processes may share a store (see stages/store/locks.py):
- `.drdc.lock` (store lock, held for milliseconds) serialises every metadata change; attributes are re-read from
  disk under it before being changed, so no process overwrites another's `current` pointer or entry status.
- an exclusive entry (`begin(..., exclusive=True)`: training, index, fuse, score) has a writer lock `<key>/.lock`;
  a second writer is refused with the holder's pid, host and command.
- a shared entry (extract, infer-base, infer-diff) is filled chunk by chunk by whoever claims a chunk
  (`claim_chunks`): disjoint work for torchrun ranks or two plain processes, and a dead claimant's chunk is taken
  over. Zarr writes every chunk file atomically (temp file + rename), data before done flags.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from stages import __version__
from stages.errors import CacheMissError, StoreError
from stages.store import rollback
from stages.store.claims import CHUNK
from stages.store.faults import point
from stages.store.locks import FileLock, describe
from stages.store.registry import STAGES, hint

SCHEMA_VERSION = 1
log = logging.getLogger(__name__)  # DEBUG: the entries a command reuses, resumes, makes and completes


@contextmanager
def quiet_zarr() -> Iterator[None]:
    """Entries keep non-Zarr payloads beside their arrays (files/, claims/, .lock) by design: zarr's warning
    about them is silenced while a group's members are listed (RunStore.entries, Entry.arrays), nowhere else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component of a Zarr hierarchy")
        yield


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
        """Marked complete, with every file its stage must hold (a deleted model.pt makes it resumable again)."""
        return self.status == "complete" and not self.missing_files()

    def missing_files(self) -> list[str]:
        info = STAGES.get(self.stage)
        return [f for f in (info.files if info else ()) if not (self.files / f).is_file()]

    @property
    def path(self) -> Path:
        return self.store.path / self.stage / self.key

    @property
    def files(self) -> Path:
        p = self.path / "files"
        p.mkdir(exist_ok=True)
        return p

    def reload(self) -> "Entry":
        """Re-read this entry's metadata from disk (another process may have changed it)."""
        self.group = zarr.open_group(store=self.store.path, path=f"{self.stage}/{self.key}", mode="r+")
        return self

    def update(self, **attrs: Any) -> None:
        with self.store.locked():
            self.reload().group.attrs.update(attrs)
        point(f"{self.stage}.attrs")

    def array(self, name: str) -> zarr.Array:
        return self.group[name]

    @property
    def lock(self) -> FileLock:
        return FileLock(self.path / ".lock")

    def mark_done(self, done: zarr.Array, a: int, b: int) -> None:
        """Set the done flags of images a:b, after their data is written (the save points around it let the
        kill tests stop the process between the data and its flags)."""
        point(f"{self.stage}.data")
        done[a:b] = 1
        point(f"{self.stage}.done")

    def has(self, name: str) -> bool:
        return name in self.group

    def arrays(self) -> dict[str, zarr.Array]:
        """Every array of the entry by name (its files/, claims/ and .lock are not arrays)."""
        with quiet_zarr():
            return dict(self.group.arrays())

    def require_array(self, name: str, shape: tuple[int, ...], dtype: str, chunk: int = CHUNK) -> zarr.Array:
        """Create an image-axis-chunked array, or reopen it (resume) when it exists with the same shape."""
        with self.store.locked():  # two ranks must not both create it
            self.reload()
            if name in self.group:
                a = self.group[name]
                if tuple(a.shape) != tuple(shape) or a.dtype != np.dtype(dtype):
                    raise StoreError(f"{self.path / name}: exists with shape {a.shape} {a.dtype}, "
                                     f"expected {shape} {dtype}")
                return a
            chunks = (min(chunk, max(shape[0], 1)),) + tuple(shape[1:])
            # Float maps and features barely compress (zstd: 11 % on fused maps) and zstd makes writing them 2x
            # and reading them up to 5x slower (measured), so they are stored uncompressed but checksummed
            # (a damaged chunk still fails to read, and `cache verify` names it); images and masks compress.
            raw = {"compressors": Crc32cCodec()} if np.dtype(dtype).kind == "f" else {}
            return self.group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, **raw)

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
        """Mark complete (once every done flag is set, if there are any) and make it the current entry."""
        with self.store.locked():
            self.reload()
            if "done" in self.group and not self.group["done"][:].all():
                d = self.group["done"][:]
                raise StoreError(f"{self.path}: cannot complete, {int(d.size - d.sum())} images are not done")
            if not self.is_complete:
                self.group.attrs.update({**attrs, "status": "complete", "completed": _now()})
            self.store.set_current(self)
        point(f"{self.stage}.complete")
        log.debug("%s %s: complete", self.stage, self.key)
        self.lock.release()
        rollback.ACTIVE.pop(str(self.path), None)

    def is_busy(self) -> bool:
        """Whether another process is writing this entry right now (its writer lock or a chunk claim is held)."""
        from stages.store.locks import is_locked

        return is_locked(self.path / ".lock") or any(is_locked(p) for p in (self.path / "claims").glob("*.lock"))

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


LOCK_NAME = ".drdc.lock"


class RunStore:
    """A run store on disk. `create=True` makes a new one if the path does not exist."""

    def __init__(self, path: str | Path, create: bool = False):
        self.path = Path(path).expanduser().absolute()
        self.name = str(path)
        exists = (self.path / "zarr.json").is_file()
        if not exists:
            if not create:
                raise StoreError(f"{self.path}: no run store here; create one with `drdc index --data ROOT --run {path}`")
            self._create()
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

    def _create(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path}: exists and is not a drdc run store; choose another --run")
        try:
            made = [p for p in (*reversed(self.path.parents), self.path) if not p.exists()]
            self.path.mkdir(parents=True, exist_ok=True)
            with self.locked():  # two `drdc index` on a new path: one creates, the other opens
                if (self.path / "zarr.json").is_file():
                    self.root = zarr.open_group(self.path, mode="r+")
                    return
                if any(p.name != LOCK_NAME for p in self.path.iterdir()):
                    raise StoreError(f"{self.path}: exists and is not a drdc run store; choose another --run")
                self.root = zarr.open_group(self.path, mode="w")
                self.root.attrs.update(
                    drdc_schema=SCHEMA_VERSION, drdc_version=__version__, created=_now(), current={}
                )
                rollback.CREATED_STORES[str(self.path)] = made
        except OSError as e:
            raise StoreError(f"{self.path}: cannot create run store ({e.strerror or e})") from None

    @property
    def writable(self) -> bool:
        """Whether this process may write the store (a store on a read-only mount still serves what it holds)."""
        return os.access(self.path, os.W_OK)

    def locked(self) -> FileLock:
        """The store lock: hold it (`with store.locked():`) for read-modify-write of metadata; re-entrant."""
        return FileLock(self.path / LOCK_NAME)

    def reload(self) -> None:
        self.root = zarr.open_group(self.path, mode="r+")

    # -- entries ---------------------------------------------------------------------------------------
    def get(self, stage: str, key: str) -> Entry | None:
        try:
            g = self.root[f"{stage}/{key}"]
        except KeyError:
            return None
        return Entry(self, g)

    def begin(self, stage: str, params: dict, inputs: dict[str, str], seed: int | None = None,
              exclusive: bool = True) -> tuple[Entry, bool]:
        """The entry for these params and inputs: (entry, cached). A complete entry is returned as cached;
        a partial one is reopened to resume; otherwise a new one is created with status 'running'.
        exclusive: take the entry's writer lock (held until `complete` or the command ends), refusing with the
        holder's name if another process has it; shared entries are written through `claim_chunks` instead."""
        key = make_key(stage, params, inputs)
        with self.locked():
            self.reload()
            e = self.get(stage, key)
            if e is not None and e.is_complete:
                self.set_current(e)
                log.debug("%s %s: complete, reused (params %s, inputs %s)", stage, key, canonical(params),
                          canonical(inputs))
                return e, True
            if exclusive:
                lock = FileLock(self.path / stage / key / ".lock")
                if not lock.acquire(blocking=False):
                    raise StoreError(f"{stage.replace('_', '-')} {key} in {self.name} is being written by "
                                     f"{describe(lock.holder())}; wait for it to finish or stop it")
            how = "resumed" if e is not None else "created"
            if e is not None:
                e.group.attrs.update(resumed=_now())
                if exclusive:  # a save killed between write and rename leaves its temp file behind
                    for tmp in (e.path / "files").glob(".*.partial"):
                        tmp.unlink(missing_ok=True)
            else:
                g = self.root.require_group(f"{stage}/{key}")
                g.attrs.update(
                    stage=stage, key=key, params=params, inputs=inputs, status="running", seed=seed,
                    created=_now(), drdc_version=__version__,
                )
                e = Entry(self, g)
                rollback.CREATED.add(str(e.path))
        rollback.ACTIVE[str(e.path)] = e
        log.debug("%s %s: %s (params %s, inputs %s)", stage, key, how, canonical(params), canonical(inputs))
        return e, False

    def set_current(self, entry: Entry) -> None:
        with self.locked():
            self.reload()
            cur = dict(self.root.attrs.get("current", {}))
            cur[entry.stage] = entry.key
            self.root.attrs.update(current=cur)

    def current(self, stage: str) -> Entry:
        """The current complete entry of a stage, checked fresh against the current entries upstream."""
        self.reload()
        key = self.root.attrs.get("current", {}).get(stage)
        if key is None:
            raise CacheMissError(f"no {stage} result in {self.name}; run `{hint(stage, self.name)}` first")
        e = self.get(stage, key)
        if e is None or not e.is_complete:
            raise CacheMissError(f"the {stage} result {key} in {self.name} is not complete; rerun "
                                 f"`{remake(e) if e is not None else hint(stage, self.name)}`")
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
                                         f"incomplete; rerun `{remake(up) if up is not None else hint(up_stage, self.name)}`")
                self.check_fresh(up)
                continue
            up = self.current(up_stage)
            if up.key != up_key:
                raise CacheMissError(
                    f"the {e.stage} result {e.key} was computed from {up_stage} {up_key}, but the current "
                    f"{up_stage} is {up.key}; rerun `{remake(e)}`"
                )

    def entries(self) -> Iterator[Entry]:
        """Every entry, in pipeline order."""
        for stage in STAGES:
            if stage not in self.root:
                continue
            with quiet_zarr():
                groups = sorted(self.root[stage].groups(), key=lambda kv: kv[1].attrs.get("created", ""))
            for _, g in groups:
                yield Entry(self, g)

    @property
    def current_keys(self) -> dict[str, str]:
        return dict(self.root.attrs.get("current", {}))

    def set_attr(self, **attrs: Any) -> None:
        with self.locked():
            self.reload()
            self.root.attrs.update(attrs)

    def attr(self, name: str, default: Any = None) -> Any:
        return self.root.attrs.get(name, default)


def remake(e: Entry) -> str:
    """The command that makes e again, with e's own params (on the current inputs)."""
    from stages.store.commands import entry_command

    return entry_command(e)


