"""Damage in a run store becomes one StoreError line that names the entry, the array, chunk, file or attribute at
fault and the commands that bring the result back, in every command that reads the store (not only in
`drdc cache verify`).

Three checks, from cheap to thorough:

- attributes (`attrs_problem`), whenever an entry is opened: the attributes every reader relies on are there with
  their types; an entry's stage, key, params and inputs agree with its key (the key hashes them, so a changed
  param is caught whatever it is); and an entry sealed when it completed (`seal`: a digest of every attribute)
  still matches its seal, so no attribute of a complete entry can change unseen (entries of stores made before
  seals get the type checks only).
- structure (`structure_problem`), when an entry is first read by a command: every array's metadata opens, every
  chunk of a complete entry's arrays is a file (float arrays, and arrays created by this drdc, store every chunk;
  a missing one would silently read as zeros), raw chunks have their exact size, the done flags are all set, the
  stage's files are there, non-empty and well-formed.
- content (`content_problem`), when a stage finds its own result cached and before it says "cached": every chunk
  passes its checksum (or decodes), every checkpoint's zip members pass theirs, every JSON file parses.

A chunk that fails while a stage reads it (a damage the structure check cannot see) is turned into the same line
by the arrays an Entry hands out (cache.StoredArray).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from stages.errors import DamageError, Part, Step
from stages.config.registry import STAGES

if TYPE_CHECKING:
    from stages.store.cache import Entry

STATUSES = ("running", "complete")
VOLATILE = ("seal", "resumed")  # attributes outside the seal: the seal itself, and the note a resume adds
SKIP_DIRS = ("files", "claims")  # an entry's folders that are not arrays


def digest(attrs: dict) -> str:
    """The seal of an entry's attributes: sha256 of their JSON, every attribute but VOLATILE."""
    body = {k: v for k, v in attrs.items() if k not in VOLATILE}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()[:16]


# -- attributes ------------------------------------------------------------------------------------------------
def _is(kind: Any) -> Callable[[Any], bool]:
    if kind is int:
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    if kind is str:
        return lambda v: isinstance(v, str)
    return lambda v: isinstance(v, kind)


_INT, _STR, _DICT, _LIST = _is(int), _is(str), _is(dict), _is(list)


def _opt(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or test(v)


def _list_of(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(test(x) for x in v)


def _record(r: Any) -> bool:
    return (isinstance(r, dict) and _STR(r.get("category")) and _STR(r.get("split")) and _STR(r.get("path"))
            and _INT(r.get("label")) and _opt(_STR)(r.get("defect")) and _opt(_STR)(r.get("mask")))


# the result attributes readers rely on, per stage: name -> (test, needed once the entry is complete)
RESULT_ATTRS: dict[str, dict[str, tuple[Callable[[Any], bool], bool]]] = {
    "index": {"records": (_list_of(_record), True), "categories": (_list_of(_STR), True),
              "masked_categories": (_list_of(_STR), True), "empty_masks": (_LIST, False)},
    "extract": {"channels": (lambda v: _INT(v) and v > 0, True), "backbone_channels": (_list_of(_INT), False),
                "weights_file": (_opt(_STR), False)},
    "*": {"arrays": (_list_of(_STR), False), "created": (_STR, False), "completed": (_STR, False),
          "seed": (_opt(_INT), False)},
    "train_base": {"history": (_LIST, True)},
    "train_diff": {"history": (_LIST, True)},
    "infer_base": {"residual_categories": (_list_of(_STR), False), "residual_channels": (_list_of(_INT), False)},
    "fuse": {"c_feat": (lambda v: _INT(v) and v > 0, True), "diffusion_size": (_opt(_INT), False),
             "norm_categories": (_list_of(_STR), False), "norm_fold0_categories": (_list_of(_STR), False),
             "norm_fold1_categories": (_list_of(_STR), False)},
    "score": {"metrics": (_DICT, True), "val_metrics": (_DICT, False), "test_by_kind": (_DICT, False),
              "val_by_kind": (_DICT, False), "source_stage": (_STR, True)},
    "calibrate": {"thresholds": (_DICT, True), "mode": (_STR, True)},
    "tune": {"trials": (_LIST, True)},
}


def attrs_problem(stage: str, key: str, attrs: Any, sealed_store: bool,
                  keys_of: Callable[[str, dict, dict], tuple[str, ...]]) -> str | None:
    """What is wrong with the attributes of entry stage/key, or None. keys_of(stage, params, inputs): the keys
    these would hash to (this drdc's and older spellings)."""
    if not isinstance(attrs, dict):
        return "its attributes are not a JSON object"
    for name, test, what in (("stage", _STR, "a string"), ("key", _STR, "a string"), ("params", _DICT, "an object"),
                             ("inputs", _DICT, "an object"), ("status", _STR, "a string")):
        if name not in attrs:
            return f"attribute {name} is missing"
        if not test(attrs[name]):
            return f"attribute {name} is {_show(attrs[name])}, not {what}"
    if attrs["stage"] != stage or attrs["key"] != key:
        return f"its attributes say {attrs['stage']} {attrs['key']}, its folder {stage}/{key}"
    if attrs["status"] not in STATUSES:
        return f"attribute status is {_show(attrs['status'])}, not one of {', '.join(STATUSES)}"
    if not all(_STR(k) and _STR(v) for k, v in attrs["inputs"].items()):
        return "attribute inputs does not map stage names to keys"
    if key not in keys_of(stage, attrs["params"], attrs["inputs"]):
        return "its params or inputs do not hash to its key (an attribute was changed)"
    complete = attrs["status"] == "complete"
    seal = attrs.get("seal")
    if seal is not None and (not _STR(seal) or seal != digest(attrs)):
        return "its attributes do not match their seal (an attribute was changed)"
    if seal is None and complete and sealed_store:
        return "attribute seal is missing"
    for name, (test, needed) in {**RESULT_ATTRS["*"], **RESULT_ATTRS.get(stage, {})}.items():
        if name not in attrs:
            if needed and complete and seal is None:  # a sealed entry holds what its stage wrote
                return f"attribute {name} is missing"
            continue
        if not test(attrs[name]):
            return f"attribute {name} is {_show(attrs[name])}, not what {stage.replace('_', '-')} writes"
    return None


def _show(v: Any) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


# -- arrays ----------------------------------------------------------------------------------------------------
def chunk_files(arr: Any, path: Path, rows: Any = None) -> list[tuple[int, Path]]:
    """(chunk index along the image axis, file) of every chunk of `arr` (stored at `path`) holding a row of
    `rows` (None: every row)."""
    shape, chunks = tuple(arr.shape), tuple(arr.chunks)
    if any(s == 0 for s in shape):
        return []
    n0 = -(-shape[0] // chunks[0])
    idx = range(n0) if rows is None else sorted({int(r) // chunks[0] for r in rows})
    grid = [range(-(-s // c)) for s, c in zip(shape[1:], chunks[1:])]
    out = []
    for i in idx:
        for rest in np.ndindex(*(len(g) for g in grid)) if grid else [()]:
            out.append((i, path / arr.metadata.encode_chunk_key((i, *rest))))
    return out


def _codecs(arr: Any) -> list[str]:
    return [type(c).__name__ for c in arr.metadata.codecs]


def is_dense(arr: Any) -> bool:
    """Whether every chunk of this array is stored (so a missing chunk file is damage, not zeros): arrays created
    by this drdc say so, and float arrays always are (a chunk of maps or features is never all zeros)."""
    return bool(arr.attrs.get("drdc_dense")) or np.dtype(arr.dtype).kind == "f"


def raw_size(arr: Any) -> int | None:
    """The exact size of each chunk file of an uncompressed (bytes + crc32c) array, else None."""
    if _codecs(arr) != ["BytesCodec", "Crc32cCodec"]:
        return None
    return int(np.prod(arr.chunks)) * np.dtype(arr.dtype).itemsize + 4


def crc_ok(data: bytes) -> bool:
    import google_crc32c

    return len(data) >= 4 and np.uint32(google_crc32c.value(data[:-4])).tobytes() == data[-4:]


def rows_of(chunk: int, arr: Any) -> str:
    a = chunk * arr.chunks[0]
    return f"rows {a}-{min(a + arr.chunks[0], arr.shape[0]) - 1}"


def array_names(entry: "Entry") -> list[str]:
    """The entry's array folders, from the filesystem (a folder whose metadata is gone is still named)."""
    return sorted(p.name for p in entry.path.iterdir() if p.is_dir() and p.name not in SKIP_DIRS)


def structure_problem(entry: "Entry") -> str | None:
    """What a cheap look finds wrong with a complete entry (metadata, missing or truncated chunks, done flags,
    files), or None. Partial entries: their attributes only (a resume rewrites what is not done)."""
    if entry.status != "complete":
        return None
    return arrays_problem(entry) or done_problem(entry) or files_problem(entry, deep=False)


def arrays_problem(entry: "Entry") -> str | None:
    """Every array the entry completed with is there (the `arrays` it recorded; entries made before: its stage's),
    its metadata reads, and every chunk that must be stored is a file of the right size."""
    names = array_names(entry)
    recorded = entry.attrs.get("arrays")
    info = STAGES.get(entry.stage)
    for need in recorded if isinstance(recorded, list) else (info.arrays if info else ()):
        if need not in names:
            return f"array {need} is missing"
    for name in names:
        try:
            arr = entry.raw_array(name)
        except Exception as e:  # noqa: BLE001 - unreadable metadata, whatever the parser says
            return f"array {name} is unreadable ({_why(e)})"
        size = raw_size(arr)
        dense = is_dense(arr)
        for i, f in chunk_files(arr, entry.path / name):
            if dense and not f.is_file():
                return f"array {name} chunk {i} ({rows_of(i, arr)}) is missing"
            if size is not None and f.is_file() and f.stat().st_size != size:
                return f"array {name} chunk {i} ({rows_of(i, arr)}) is truncated or padded"
    return None


def done_problem(entry: "Entry") -> str | None:
    if not (entry.path / "done" / "zarr.json").is_file():
        return None
    try:
        d = entry.raw_array("done")[:]
    except Exception as e:  # noqa: BLE001
        return f"array done is unreadable ({_why(e)})"
    if not d.all():
        return f"marked complete but {int(d.size - d.sum())}/{d.size} done flags are off"
    return None


def files_problem(entry: "Entry", deep: bool) -> str | None:
    """The files/ an entry's stage must hold, and every checkpoint and JSON file there: present, non-empty and
    well-formed (deep: every zip member passes its CRC). files/last.pt, a training's resume point, is checked
    where it is resumed from."""
    files = entry.path / "files"
    for name in required_files(entry):
        if not (files / name).is_file():
            return f"file {name} is missing"
    for f in sorted(files.iterdir()) if files.is_dir() else []:
        if f.name == "last.pt" or f.name.startswith(".") or not f.is_file():
            continue
        problem = file_problem(f, deep)
        if problem:
            return problem
    return None


def required_files(entry: "Entry") -> tuple[str, ...]:
    """The files/ a complete entry of its stage holds: the trainers' model.pt and config.json, and infer-base's
    residual Gaussians when its norm is mahalanobis."""
    info = STAGES.get(entry.stage)
    extra = ("residual.pt",) if entry.stage == "infer_base" and entry.params.get("residual_norm") == "mahalanobis" else ()
    return (*(info.files if info else ()), *extra)


def file_problem(f: Path, deep: bool = True) -> str | None:
    try:
        if f.stat().st_size == 0:
            return f"file {f.name} is empty"
        if f.suffix == ".json":
            try:
                json.loads(f.read_text())
            except ValueError as e:
                return f"file {f.name} is not valid JSON ({_why(e)})"
        elif f.suffix == ".pt":
            with zipfile.ZipFile(f) as z:
                bad = z.testzip() if deep else None
            if bad is not None:
                return f"file {f.name} is damaged (member {bad} fails its CRC)"
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        if isinstance(e, OSError) and not isinstance(e, (IsADirectoryError, zipfile.BadZipFile)) and e.errno in (13, 1):
            raise  # permission: the environment, not damage
        return f"file {f.name} is damaged ({_why(e)})"
    return None


def chunk_problem(arr: Any, name: str, path: Path, rows: Any = None) -> str | None:
    """The first chunk of array `name` (holding a row of `rows`; None: any) that fails its checksum or does not
    decode, or None."""
    crc = _codecs(arr)[-1:] == ["Crc32cCodec"]
    for i, f in chunk_files(arr, path, rows):
        if not f.is_file():
            continue  # an empty chunk of an array that does not store them (structure_problem: the others)
        try:
            if crc:
                if not crc_ok(f.read_bytes()):
                    return f"array {name} chunk {i} ({rows_of(i, arr)}) fails its checksum"
            else:
                a = i * arr.chunks[0]
                arr[a:a + arr.chunks[0]]
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - a chunk that does not decode
            return f"array {name} chunk {i} ({rows_of(i, arr)}) does not decode ({_why(e)})"
    return None


def content_problem(entry: "Entry") -> str | None:
    """Every chunk of every array passes its checksum (or decodes, for arrays without one) and every file is
    whole: what a stage checks before it calls its own result cached."""
    problem = structure_problem(entry)
    if problem:
        return problem
    for name in array_names(entry):
        problem = chunk_problem(entry.raw_array(name), name, entry.path / name)
        if problem:
            return problem
    return files_problem(entry, deep=True)


def _why(e: BaseException) -> str:
    text = (str(e).splitlines() or [""])[0]
    return f"{type(e).__name__}: {text[:80]}" if text else type(e).__name__


# -- the message -----------------------------------------------------------------------------------------------
def repair_step(run: str) -> Step:
    """`cache verify --repair` on a run: removes every damaged entry, rewrites a damaged zarr.json, and names
    the steps that make the removed results again."""
    return Step("cache_verify", run, {"repair": True}, whole=False)


def gc_step(run: str, key: str) -> Step:
    """`cache gc` of one entry (by its key)."""
    return Step("cache_gc", run, {"key": key}, whole=False)


def fix(run: str, key: str, again: Step | None) -> tuple[Part, ...]:
    """The steps that bring a damaged entry's result back: remove it, then make it again."""
    if again is None:
        return ("remove it with ", gc_step(run, key), ", then rerun the command that made it (",
                repair_step(run), " removes every damaged entry and prints those commands)")
    return ("remove it with ", gc_step(run, key), ", then rerun ", again)


def damaged(entry_or_none: "Entry | None", run: str, stage: str, key: str, what: str) -> DamageError:
    """The one line for a damaged entry: what is wrong, that it is not used, and the fix."""
    again = None
    if entry_or_none is not None:  # its attributes are sound: the step with the options it was made with
        try:
            again = entry_or_none.step()
        except Exception:  # noqa: BLE001
            again = None
    return DamageError(f"{stage.replace('_', '-')} {key} in {run} is damaged: {what}; ", *fix(run, key, again))
