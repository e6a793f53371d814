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
from zarr.codecs import Crc32cCodec, ZstdCodec

from stages import __version__
from stages.errors import CacheMissError, DamageError, Option, Step, StoreError
from stages.store import integrity, rollback
from stages.store.claims import CHUNK
from stages.store.faults import point
from stages.store.locks import FileLock, describe
from stages.config.registry import STAGES

SCHEMA_VERSION = 1
log = logging.getLogger(__name__)  # DEBUG: the entries a command reuses, resumes, makes and completes
# Every chunk is stored, zeros included: a chunk file that is missing is then damage, never an all-zero chunk
# (integrity.is_dense; arrays made before this say nothing and are read as zarr reads them).
zarr.config.set({"array.write_empty_chunks": True})


@contextmanager
def quiet_zarr() -> Iterator[None]:
    """Entries keep non-Zarr payloads beside their arrays (files/, claims/, .lock) by design: zarr's warning
    about them is silenced while a group's members are listed (RunStore.entries, Entry.arrays), nowhere else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component of a Zarr hierarchy")
        yield


def settle(obj: Any) -> Any:
    """One spelling per value, for keys: a signed zero is zero, a tuple a list, a numpy scalar its Python number.
    (Floats spelled 1e-4 or 0.0001 are one float already; the order of a list whose order means nothing, and an
    int given for a float, are settled where the params are built, by the fields' declared types:
    stages.config.settle.settle_fields.) Every value an ordinary option gives is unchanged, so existing keys stay."""
    if isinstance(obj, dict):
        return {k: settle(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [settle(v) for v in obj]
    if isinstance(obj, np.generic):
        return settle(obj.item())
    if isinstance(obj, float) and obj == 0.0:
        return 0.0
    return obj


def canonical(obj: Any) -> str:
    return json.dumps(settle(obj), sort_keys=True, separators=(",", ":"), default=str)


def make_key(stage: str, params: dict, inputs: dict[str, str]) -> str:
    payload = {"stage": stage, "params": params, "inputs": inputs, "schema": SCHEMA_VERSION}
    return hashlib.sha256(canonical(payload).encode()).hexdigest()[:12]


def keys_of(stage: str, params: dict, inputs: dict[str, str]) -> tuple[str, ...]:
    """The keys an entry with these attributes may have: under each schema so far, this drdc's, and the one drdc
    made before values were settled (a -0.0 written as such)."""
    out = []
    for schema in range(1, SCHEMA_VERSION + 1):
        payload = {"stage": stage, "params": params, "inputs": inputs, "schema": schema}
        for text in (canonical(payload), json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)):
            out.append(hashlib.sha256(text.encode()).hexdigest()[:12])
    return tuple(out)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StoredArray:
    """An entry's array, read as a zarr array is, except that damage is a StoreError naming the entry, the array
    and the chunk, and the fix: a chunk that fails its checksum or does not decode, or the chunk file of a
    complete entry's array that stores every chunk (integrity.is_dense) gone missing (zarr would read zeros)."""

    def __init__(self, entry: "Entry", name: str, arr: zarr.Array):
        self._entry, self._name, self._a = entry, name, arr
        self._check_files = entry.status == "complete" and integrity.is_dense(arr)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._a, attr)

    def __len__(self) -> int:
        return len(self._a)

    def __setitem__(self, sel: Any, value: Any) -> None:
        self._a[sel] = value

    def __getitem__(self, sel: Any) -> Any:
        return self._read(lambda: self._a[sel], sel[0] if isinstance(sel, tuple) and sel else sel)

    def get_orthogonal_selection(self, sel: Any) -> Any:
        return self._read(lambda: self._a.get_orthogonal_selection(sel), sel[0] if isinstance(sel, tuple) else sel)

    def _rows(self, sel: Any) -> Any:
        n = self._a.shape[0] if self._a.ndim else 0
        if sel is Ellipsis or sel is None:
            return range(n)
        if isinstance(sel, slice):
            return range(*sel.indices(n))
        if isinstance(sel, (int, np.integer)):
            return [int(sel) % n] if n else []
        a = np.asarray(sel)
        return np.flatnonzero(a) if a.dtype == bool else a.ravel() % max(n, 1)

    def _read(self, read: Any, sel: Any) -> Any:
        if self._check_files:
            for i, f in integrity.chunk_files(self._a, self._entry.path / self._name, self._rows(sel)):
                if not f.is_file():
                    raise self._entry.damage(f"array {self._name} chunk {i} ({integrity.rows_of(i, self._a)}) "
                                             "is missing")
        try:
            return read()
        except (IndexError, TypeError, MemoryError, OSError):
            raise  # a bad selection is a bug, memory and permissions the machine's: not damage
        except Exception as e:  # noqa: BLE001 - a checksum mismatch, a zstd error, a chunk of the wrong size
            what = integrity.chunk_problem(self._a, self._name, self._entry.path / self._name, self._rows(sel))
            raise self._entry.damage(what or f"array {self._name} does not read ({integrity._why(e)})") from None


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
        return [f for f in (info.files if info else ()) if not (self.path / "files" / f).is_file()]

    @property
    def path(self) -> Path:
        return self.store.path / self.stage / self.key

    @property
    def files(self) -> Path:
        """The entry's files/ folder (made when missing, if the store is writable: a read-only store's entry
        is only read)."""
        p = self.path / "files"
        if not p.is_dir() and self.store.writable:
            p.mkdir(exist_ok=True)
        return p

    def step(self) -> Step:
        """The Step that makes this entry again: its stage with its own params (on the current inputs); an extract
        entry made from a local weight file names that file."""
        weights = self.attrs.get("weights_file") if self.stage == "extract" else None
        return Step(self.stage, self.store.name, dict(self.params), weights=weights)

    def damage(self, what: str) -> StoreError:
        """The StoreError for damage found in this entry: what is wrong, and how to bring the result back."""
        return integrity.damaged(self, self.store.name, self.stage, self.key, what)

    def reload(self) -> "Entry":
        """Re-read this entry's metadata from disk (another process may have changed it)."""
        self.group = zarr.open_group(store=self.store.path, path=f"{self.stage}/{self.key}", mode=self.store._mode())
        return self

    def update(self, **attrs: Any) -> None:
        """Set attributes (re-read from disk under the store lock); a sealed entry is sealed again in the same
        write. Values equal to the stored ones are not written (so a read-only store serves a cached result)."""
        stored = json.loads(json.dumps(attrs, default=str))
        # compared with the disk, not with self.group.attrs: a caller may have changed a list it read from those
        on_disk = zarr.open_group(store=self.store.path, path=f"{self.stage}/{self.key}", mode="r").attrs
        if all(k in on_disk and settle(on_disk[k]) == settle(v) for k, v in stored.items()):
            return
        self.store.must_write(f"updating {self.stage.replace('_', '-')} {self.key} must write to it")
        with self.store.locked():
            self.reload()
            self._write({**attrs, **({"seal": None} if "seal" in self.group.attrs else {})})
        point(f"{self.stage}.attrs")

    def _write(self, attrs: dict) -> None:
        """One write of attrs; "seal": None in attrs: seal the result (the digest of every attribute as stored)."""
        if "seal" in attrs:
            merged = json.loads(json.dumps({**dict(self.group.attrs), **attrs}, default=str))
            attrs = {**attrs, "seal": integrity.digest(merged)}
        self.group.attrs.update(attrs)

    def array(self, name: str) -> StoredArray:
        """The array `name`; damage (missing, unreadable metadata, a chunk that does not read) is a StoreError
        naming it and the fix."""
        return StoredArray(self, name, self.raw_array(name, checked=True))

    def raw_array(self, name: str, checked: bool = False) -> zarr.Array:
        """The zarr array itself (checked: a missing or unreadable array is a StoreError naming it)."""
        if not checked:
            return self.group[name]
        try:
            return self.group[name]
        except KeyError:
            raise self.damage(f"array {name} is missing") from None
        except (OSError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - unreadable array metadata
            raise self.damage(f"array {name} is unreadable ({integrity._why(e)})") from None

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
        return (self.path / name / "zarr.json").is_file() or name in self.group

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
            # Every chunk carries a checksum (zstd alone does not notice a flipped bit) and every chunk is stored,
            # zeros included (drdc_dense), so a chunk file gone missing is damage, not an image of zeros.
            codec = {"compressors": Crc32cCodec() if np.dtype(dtype).kind == "f" else (ZstdCodec(), Crc32cCodec())}
            return self.group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                                           attributes={"drdc_dense": True}, **codec)

    def require_done(self, n: int, chunk: int = CHUNK) -> zarr.Array:
        return self.require_array("done", (n,), "uint8", chunk)

    def pending(self, n: int, chunk: int = CHUNK) -> list[tuple[int, int]]:
        """(start, stop) of every chunk with an image not done. Whole chunks are recomputed, so a resumed run
        batches exactly as an uninterrupted one and ends bit-identical."""
        done = self.require_done(n, chunk)[:] if n else np.zeros(0, np.uint8)
        return [(s, min(s + chunk, n)) for s in range(0, n, chunk) if not done[s : s + chunk].all()]

    def progress(self) -> tuple[int, int] | None:
        if not self.has("done"):
            return None
        d = self.array("done")[:]
        return int(d.sum()), int(d.size)

    def complete(self, **attrs: Any) -> None:
        """Mark complete (once every done flag is set, if there are any) and make it the current entry."""
        with self.store.locked():
            self.reload()
            if "done" in self.group and not self.group["done"][:].all():
                d = self.group["done"][:]
                raise StoreError(f"{self.path}: cannot complete, {int(d.size - d.sum())} images are not done")
            if not self.is_complete:  # sealed: no attribute of a result, nor the list of its arrays, changes unseen
                self._write({**attrs, "status": "complete", "completed": _now(), "arrays": integrity.array_names(self),
                             "seal": None})
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
KEY_CHARS = frozenset("0123456789abcdef")
# entry path -> (stamp of its zarr.json, what its last check found): each entry's attributes and structure are
# checked once per command while its metadata is unchanged (forget_checked: when a command ends)
_CHECKED: dict[tuple[str, str], tuple[tuple[int, int], str | None]] = {}


def forget_checked() -> None:
    _CHECKED.clear()


def is_key(key: Any) -> bool:
    return isinstance(key, str) and len(key) == 12 and set(key) <= KEY_CHARS


def root_problem(attrs: dict) -> str | None:
    """What is wrong with a run store's own attributes (its zarr.json), or None."""
    from stages.config.presets import PRESETS

    schema = attrs.get("drdc_schema")
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        return f"attribute drdc_schema is {integrity._show(schema)}, not a schema number"
    if "current" not in attrs:
        return "attribute current is missing"
    cur = attrs["current"]
    if not isinstance(cur, dict) or not all(k in STAGES and is_key(v) for k, v in cur.items()):
        return f"attribute current is {integrity._show(cur)}, not a map of stages to entry keys"
    preset = attrs.get("preset")
    if preset is not None and preset not in PRESETS:
        return f"attribute preset is {integrity._show(preset)}, not one of {', '.join(PRESETS)}"
    if not isinstance(attrs.get("data_root", ""), str):
        return f"attribute data_root is {integrity._show(attrs['data_root'])}, not a path"
    return None


class RunStore:
    """A run store on disk. `create=True` makes a new one if the path does not exist. mend=True opens a store
    whose own attributes are damaged (`root_problem` says what), for `drdc cache verify --repair` to rewrite."""

    def __init__(self, path: str | Path, create: bool = False, mend: bool = False):
        self.path = Path(path).expanduser().absolute()
        self.name = str(path)
        self.here: dict[str, Any] = {}  # root attributes set by this process that a read-only store cannot hold
        self.root_problem: str | None = None
        exists = (self.path / "zarr.json").is_file()
        if not exists:
            if not create:
                raise StoreError(f"{self.path}: no run store here; create one with ", Step("index", str(path)))
            self._create()
            return
        try:
            self.root = zarr.open_group(self.path, mode=self._mode())
            attrs = dict(self.root.attrs)
        except Exception as e:  # noqa: BLE001 - any zarr failure means the store is unusable
            raise DamageError(f"{self.path}: cannot open run store ({integrity._why(e)}); if it is a drdc run store, "
                             "its zarr.json is damaged: restore it, or index into a new store") from None
        schema = attrs.get("drdc_schema")
        if schema is None and not mend:
            raise StoreError(f"{self.path}: a Zarr store but not a drdc run store")
        if isinstance(schema, int) and not isinstance(schema, bool) and schema > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: written by a newer drdc (schema {schema}, this drdc reads {SCHEMA_VERSION}); upgrade drdc"
            )
        self.root_problem = root_problem(attrs)
        if self.root_problem and not mend:
            raise self._root_damaged(self.root_problem)

    def _root_damaged(self, problem: str) -> DamageError:
        """Damage in the store's own zarr.json: what is wrong, and the command that rewrites it."""
        return DamageError(f"{self.path}/zarr.json is damaged: {problem}; ", integrity.repair_step(self.name),
                           " rewrites it from the store's entries")

    def _create(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path}: exists and is not a drdc run store; choose another ", Option("run"))
        # a folder with anything in it is not ours to write into: refused before a lock file is made there
        if self.path.is_dir() and any(p.name != LOCK_NAME for p in self.path.iterdir()):
            raise StoreError(f"{self.path}: exists and is not a drdc run store; choose another ", Option("run"))
        made = [p for p in (*reversed(self.path.parents), self.path) if not p.exists()]
        lock_was_there = (self.path / LOCK_NAME).exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with self.locked():  # two `drdc index` on a new path: one creates, the other opens
                if (self.path / "zarr.json").is_file():
                    self.root = zarr.open_group(self.path, mode="r+")
                    return
                if any(p.name != LOCK_NAME for p in self.path.iterdir()):
                    raise StoreError(f"{self.path}: exists and is not a drdc run store; choose another ", Option("run"))
                self.root = zarr.open_group(self.path, mode="w")
                self.root.attrs.update(
                    drdc_schema=SCHEMA_VERSION, drdc_version=__version__, created=_now(), current={}, sealed=True
                )
                rollback.CREATED_STORES[str(self.path)] = made
        except (OSError, StoreError) as e:
            if not (self.path / "zarr.json").is_file():  # refused: leave nothing of ours behind
                if not lock_was_there:
                    (self.path / LOCK_NAME).unlink(missing_ok=True)
                for p in reversed(made):
                    try:
                        p.rmdir()
                    except OSError:
                        break
            if isinstance(e, StoreError):
                raise
            raise StoreError(f"{self.path}: cannot create run store ({e.strerror or e})") from None

    @property
    def writable(self) -> bool:
        """Whether this process may write the store (a store on a read-only mount still serves what it holds)."""
        return os.access(self.path, os.W_OK, effective_ids=os.access in os.supports_effective_ids)

    def _mode(self) -> str:
        return "r+" if self.writable else "r"

    def must_write(self, what: str) -> None:
        """A StoreError when the store is read-only: `what` says what must write it (e.g. "fuse 3fa2c1d0e9b2 is not
        cached and must be written to it")."""
        if not self.writable:
            raise StoreError(f"{self.name} is read-only, and {what}; run on a writable copy of the store, or make it "
                             "writable")

    @property
    def sealed(self) -> bool:
        """Whether every complete entry of this store is sealed (stores made by this drdc; older ones: only the
        entries completed since)."""
        return self.root.attrs.get("sealed") is True

    def locked(self) -> FileLock:
        """The store lock: hold it (`with store.locked():`) for read-modify-write of metadata; re-entrant."""
        return FileLock(self.path / LOCK_NAME)

    def reload(self) -> None:
        self.root = zarr.open_group(self.path, mode=self._mode())
        problem = root_problem(dict(self.root.attrs))
        if problem and problem != self.root_problem:
            raise self._root_damaged(problem)

    # -- entries ---------------------------------------------------------------------------------------
    def slot(self, stage: str, key: str) -> tuple[Entry | None, str | None]:
        """The entry stage/key as found on disk: (entry, None) when sound, (None, None) when there is none,
        (None, what is wrong) when its metadata is damaged."""
        d = self.path / stage / key
        meta = d / "zarr.json"
        if stage not in STAGES or not is_key(key):
            return None, None
        if not meta.is_file():
            if d.is_dir() and any(p.name not in (".lock", "claims") for p in d.iterdir()):
                return None, "its zarr.json is missing"
            return None, None  # nothing, or only the lock of a writer that never created it
        try:
            st = meta.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            g = zarr.open_group(store=self.path, path=f"{stage}/{key}", mode=self._mode())
            attrs = dict(g.attrs)
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - unparseable or foreign metadata
            return None, f"its zarr.json is unreadable ({integrity._why(e)})"
        seen = _CHECKED.get((str(d), "attrs"))
        if seen is not None and seen[0] == stamp:
            problem = seen[1]
        else:
            problem = integrity.attrs_problem(stage, key, attrs, self.sealed, keys_of)
            _CHECKED[(str(d), "attrs")] = (stamp, problem)
        return (None, problem) if problem else (Entry(self, g), None)

    def get(self, stage: str, key: str) -> Entry | None:
        """The entry stage/key, None if there is none; a StoreError naming the fix if it is damaged."""
        e, problem = self.slot(stage, key)
        if problem:
            raise integrity.damaged(None, self.name, stage, key, problem)
        return e

    def check_sound(self, e: Entry, deep: bool = False) -> None:
        """A StoreError when complete entry e is damaged: its structure (integrity.structure_problem), and with
        deep its every chunk and file (integrity.content_problem). Each check runs once per command."""
        kind = "content" if deep else "structure"
        st = (e.path / "zarr.json").stat()
        stamp = (st.st_mtime_ns, st.st_size)
        seen = _CHECKED.get((str(e.path), kind))
        if seen is None or seen[0] != stamp:
            problem = integrity.content_problem(e) if deep else integrity.structure_problem(e)
            _CHECKED[(str(e.path), kind)] = seen = (stamp, problem)
            if deep:
                _CHECKED[(str(e.path), "structure")] = seen
        if seen[1]:
            raise e.damage(seen[1])

    def _reused(self, e: Entry, params: dict, inputs: dict[str, str]) -> tuple[Entry, bool]:
        """A complete entry found for these params: it becomes current, and --verbose says it was reused."""
        self.set_current(e)
        log.debug("%s %s: complete, reused (params %s, inputs %s)", e.stage, e.key, canonical(params),
                  canonical(inputs))
        return e, True

    def begin(self, stage: str, params: dict, inputs: dict[str, str], seed: int | None = None,
              exclusive: bool = True) -> tuple[Entry, bool]:
        """The entry for these params and inputs: (entry, cached). A complete entry is returned as cached once
        every chunk and file of it is found whole (a damaged one is a StoreError naming the fix); a partial one is
        reopened to resume; otherwise a new one is created with status 'running'.
        exclusive: take the entry's writer lock (held until `complete` or the command ends), refusing with the
        holder's name if another process has it; shared entries are written through `claim_chunks` instead."""
        key = make_key(stage, params, inputs)
        e = self.get(stage, key)
        if e is not None and e.is_complete:
            self.check_sound(e, deep=True)  # never "cached" for a result that would not read
            return self._reused(e, params, inputs)
        self.must_write(f"{stage.replace('_', '-')} {key} is not cached and must be written to it")
        with self.locked():
            self.reload()
            e = self.get(stage, key)
            if e is not None and e.is_complete:  # completed by another process meanwhile
                return self._reused(e, params, inputs)
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
        """Make entry its stage's current one. A read-only store keeps the pointer for this process only."""
        if self.current_keys.get(entry.stage) == entry.key:
            return
        if not self.writable:
            self.here["current"] = {**self.here.get("current", {}), entry.stage: entry.key}
            return
        with self.locked():
            self.reload()
            cur = dict(self.root.attrs.get("current", {}))
            cur[entry.stage] = entry.key
            self.root.attrs.update(current=cur)

    def current(self, stage: str) -> Entry:
        """The current complete entry of a stage, checked sound and fresh against the current entries upstream."""
        self.reload()
        key = self.current_keys.get(stage)
        if key is None:
            raise CacheMissError(f"no {stage} result in {self.name}; run ", Step(stage, self.name), " first")
        e = self.get(stage, key)
        if e is None:
            raise CacheMissError(f"the current {stage} result {key} is gone from {self.name}; rerun ",
                                 Step(stage, self.name), f", or make the newest complete {stage} result current "
                                 "with ", integrity.repair_step(self.name))
        if not e.is_complete:
            raise CacheMissError(f"the {stage} result {key} in {self.name} is not complete; rerun ", e.step())
        self.check_sound(e)
        self.check_fresh(e)
        return e

    def check_fresh(self, e: Entry) -> None:
        """Every input of e is the current entry of its stage (recursively). An input named 'stage@label' is one
        of several entries of a stage (fuse reads one infer-diff entry per c): it must exist, be complete, sound
        and fresh itself."""
        for name, up_key in e.inputs.items():
            up_stage = name.split("@")[0]
            if "@" in name:
                up = self.get(up_stage, up_key)
                if up is None or not up.is_complete:
                    raise CacheMissError(f"the {e.stage} result {e.key} needs {up_stage} {up_key}, which is gone or "
                                         "incomplete; rerun ",
                                         up.step() if up is not None else Step(up_stage, self.name))
                self.check_sound(up)
                self.check_fresh(up)
                continue
            up = self.current(up_stage)
            if up.key != up_key:
                raise CacheMissError(f"the {e.stage} result {e.key} was computed from {up_stage} {up_key}, but the "
                                     f"current {up_stage} is {up.key}; rerun ", e.step())

    def slots(self) -> Iterator[tuple[str, str, Entry | None, str | None]]:
        """(stage, key, entry or None, what is wrong or None) of every entry folder, damaged ones included, in
        pipeline order and by creation within a stage (for `cache ls`, `gc` and `verify`)."""
        for stage in STAGES:
            d = self.path / stage
            found = []
            for k in sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []:
                e, problem = self.slot(stage, k)
                if e is None and problem is None:
                    continue
                created = e.attrs.get("created") if e is not None else None
                found.append((created if isinstance(created, str) else "", stage, k, e, problem))
            for _, stage_, k, e, problem in sorted(found, key=lambda r: (r[0], r[2])):
                yield stage_, k, e, problem

    def entries(self) -> Iterator[Entry]:
        """Every sound entry, in pipeline order (a damaged one is skipped: it is named where it is asked for)."""
        for _, _, e, _ in self.slots():
            if e is not None:
                yield e

    @property
    def current_keys(self) -> dict[str, str]:
        cur = self.root.attrs.get("current", {})
        sound = {k: v for k, v in cur.items() if k in STAGES and is_key(v)} if isinstance(cur, dict) else {}
        return {**sound, **self.here.get("current", {})}

    def set_attr(self, **attrs: Any) -> None:
        """Set root attributes; values already held are not written, and a read-only store keeps the others for
        this process only."""
        attrs = {k: v for k, v in attrs.items() if self.attr(k) != v}
        if not attrs:
            return
        if not self.writable:
            self.here.update(attrs)
            return
        with self.locked():
            self.reload()
            self.root.attrs.update(attrs)

    def attr(self, name: str, default: Any = None) -> Any:
        return self.here[name] if name in self.here else self.root.attrs.get(name, default)
