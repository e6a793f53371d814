"""Every damaged store is one line and a way back, in every command that reads it.

The damages are generated from what the tiny run's store holds, not listed: for every array of every entry a
chunk flipped in place, replaced by garbage, truncated, emptied or deleted, and its metadata deleted or garbled;
every file under an entry missing, empty, garbage or truncated; every attribute of every entry's zarr.json, every
param, and every attribute of the store's own zarr.json missing, of the wrong type or of a wrong value; each
zarr.json itself gone or garbled. The commands are every command that reads a store, with the options that find
their result cached on an undamaged store. A case is one damage and one command on a fresh copy of the store.

Each case must: exit 0, 1 or 2 with no traceback; on failure say it in exactly one `error:` line, which names the
damaged entry (or the store's zarr.json) when it speaks of damage; leave no entry it created behind and change no
complete entry; and never call a damaged entry its stage's cached result.

The suite runs a seeded sample of the product (DRDC_DAMAGE_CASES, default 40; `all` for every case;
DRDC_DAMAGE_SEED picks another sample).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import TINY_DIFF, TINY_EXTRACT, TINY_INDEX, TINY_INFER, TINY_TRAIN

KINDS_CHUNK = ("flip", "garbage", "truncate", "empty", "missing")
KINDS_FILE = ("missing", "empty", "garbage", "truncate")
KINDS_ATTR = ("missing", "type", "value")


@dataclass(frozen=True)
class Damage:
    name: str
    stage: str  # "run" for the store's own zarr.json
    key: str
    harmless: bool  # what no reader relies on (a training's resume point of a finished training)
    apply: Callable[[Path], None]


def _chunk(rel: str, kind: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        f = run / rel
        data = f.read_bytes()
        if kind == "flip":
            b = bytearray(data)
            b[len(b) // 2] ^= 0x5A
            f.write_bytes(bytes(b))
        elif kind == "garbage":
            f.write_bytes(random.Random(rel).randbytes(max(7, len(data) // 3)))
        elif kind == "truncate":
            f.write_bytes(data[: len(data) // 2])
        elif kind == "empty":
            f.write_bytes(b"")
        else:
            f.unlink()
    return apply


def _other_type(v):
    if isinstance(v, bool):
        return "yes"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return 123
    if isinstance(v, list):
        return {"a": 1}
    if isinstance(v, dict):
        return [1, 2]
    return "x"


def _other_value(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, float):
        return v * 2 + 1
    if isinstance(v, str):
        return v[:-1] + ("0" if v[-1:] != "0" else "1") if v else "x"
    if isinstance(v, list):
        return v[:-1] if len(v) > 1 else v + v if v else [1]
    if isinstance(v, dict):
        return dict(list(v.items())[:-1]) if v else {"x": 1}
    return 0


def _attr(rel: str, path: tuple, kind: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        f = run / rel
        doc = json.loads(f.read_text())
        node = doc["attributes"]
        for p in path[:-1]:
            node = node[p]
        if kind == "missing":
            del node[path[-1]]
        else:
            node[path[-1]] = (_other_type if kind == "type" else _other_value)(node[path[-1]])
        f.write_text(json.dumps(doc))
    return apply


def _meta(rel: str, kind: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        f = run / rel
        if kind == "missing":
            f.unlink()
        else:
            f.write_text('{"zarr_format": 3, "node_type": ')
    return apply


def damages(run: Path) -> list[Damage]:
    """Every damage of the generated kinds to what the store at `run` holds."""
    out: list[Damage] = []
    for meta in sorted(run.glob("*/*/zarr.json")):
        entry = meta.parent
        stage, key = entry.parent.name, entry.name
        rel = entry.relative_to(run)
        for d in sorted(p for p in entry.iterdir() if p.is_dir() and p.name not in ("files", "claims")):
            chunks = sorted(f for f in (d / "c").rglob("*") if f.is_file())
            mid = chunks[len(chunks) // 2].relative_to(run)
            for kind in KINDS_CHUNK:
                out.append(Damage(f"{stage}/{d.name} chunk {kind}", stage, key, False, _chunk(str(mid), kind)))
            for kind in ("missing", "garbage"):
                out.append(Damage(f"{stage}/{d.name} metadata {kind}", stage, key, False,
                                  _meta(str(rel / d.name / "zarr.json"), kind)))
        for f in sorted((entry / "files").glob("*")) if (entry / "files").is_dir() else []:
            for kind in KINDS_FILE:
                out.append(Damage(f"{stage}/files/{f.name} {kind}", stage, key, f.name == "last.pt",
                                  _chunk(str(f.relative_to(run)), kind)))
        attrs = json.loads(meta.read_text())["attributes"]
        paths = [(k,) for k in attrs] + [("params", k) for k in attrs.get("params", {})]
        for path in paths:
            for kind in KINDS_ATTR:
                out.append(Damage(f"{stage} attribute {'.'.join(path)} {kind}", stage, key, False,
                                  _attr(str(rel / "zarr.json"), path, kind)))
        for kind in ("missing", "garbage"):
            out.append(Damage(f"{stage} zarr.json {kind}", stage, key, False, _meta(str(rel / "zarr.json"), kind)))
    for k in json.loads((run / "zarr.json").read_text())["attributes"]:
        for kind in KINDS_ATTR:
            out.append(Damage(f"store attribute {k} {kind}", "run", "zarr.json", k in ("created", "drdc_version"),
                              _attr("zarr.json", (k,), kind)))
    out.append(Damage("store zarr.json garbage", "run", "zarr.json", False, _meta("zarr.json", "garbage")))
    return out


# every command that reads a store, each finding its result cached on the undamaged tiny run
COMMANDS: dict[str, list[str]] = {
    "index": ["index", "--data", "DATA", "--run", "RUN", *TINY_INDEX],
    "extract": ["extract", "--run", "RUN", *TINY_EXTRACT],
    "train-base": ["train-base", "--run", "RUN", *TINY_TRAIN],
    "infer-base": ["infer-base", "--run", "RUN"],
    "score base": ["score", "--run", "RUN", "--source", "base"],
    "train-diff": ["train-diff", "--run", "RUN", *TINY_DIFF],
    "infer-diff": ["infer-diff", "--run", "RUN", *TINY_INFER, "--c", "1,8"],
    "fuse": ["fuse", "--run", "RUN", "--c", "1,8"],
    "fuse anew": ["fuse", "--run", "RUN", "--c", "1,8", "--gamma", "0.5"],
    "score fuse": ["score", "--run", "RUN", "--source", "fuse"],
    "calibrate": ["calibrate", "--run", "RUN", "--base-only"],
    "predict": ["predict", "--run", "RUN", "IMG"],
    "predict base": ["predict", "--run", "RUN", "IMG", "--base-only", "--out", "OUT"],
    "report": ["report", "--run", "RUN", "--csv", "OUT/m.csv"],
    "bound": ["bound", "--run", "RUN", "--scales", "2"],
    "config": ["config", "--run", "RUN"],
    "ablate": ["ablate", "--run", "RUN", "--c", "1,8"],
    "export": ["export", "--run", "RUN", "--out", "OUT", "--base-only", "--format", "torchscript"],
    "cache ls": ["cache", "ls", "--run", "RUN"],
    "cache verify": ["cache", "verify", "--run", "RUN"],
    "cache gc": ["cache", "gc", "--run", "RUN", "--stale", "--dry-run"],
}


def _tree(run: Path) -> dict[str, tuple[str, str]]:
    """{stage/key: (status, zarr.json text)} of every entry folder with metadata."""
    out = {}
    for meta in run.glob("*/*/zarr.json"):
        try:
            status = json.loads(meta.read_text())["attributes"].get("status")
        except (ValueError, KeyError, AttributeError, TypeError):
            status = None
        out[str(meta.parent.relative_to(run))] = (status, meta.read_text())
    return out


def check_case(cli, pristine: Path, data: Path, image: Path, tmp: Path, damage: Damage, command: str) -> str | None:
    """Run one case; None when it behaves, else what went wrong."""
    run = tmp / "r.zarr"
    shutil.copytree(pristine, run)
    damage.apply(run)
    before = _tree(run)
    out = tmp / "out"
    subs = {"RUN": str(run), "DATA": str(data), "IMG": str(image), "OUT": str(out), "OUT/m.csv": str(out / "m.csv")}
    res = cli(*[subs.get(a, a) for a in COMMANDS[command]], code=None)
    text = res.output
    if "Traceback" in text or (res.exception is not None and not isinstance(res.exception, SystemExit)):
        return f"traceback: {res.exception!r}"
    if res.exit_code not in (0, 1, 2):
        return f"exit {res.exit_code}"
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    if res.exit_code != 0:
        if len(errors) != 1:
            return f"{len(errors)} error lines: {res.stderr[-300:]!r}"
        if "damaged" in errors[0] and damage.key not in errors[0]:
            return f"names other damage: {errors[0][:200]}"
    after = _tree(run)
    for name, (status, _) in after.items():
        if name not in before and status != "complete":
            return f"left {name} ({status}) behind"
    for name, (status, text) in before.items():
        if status == "complete" and name in after and after[name][1] != text and damage.key not in name:
            return f"changed the complete entry {name}"
    if damage.stage != "run" and not damage.harmless and f"{damage.key} cached" in " ".join(text.split()):
        return f"called the damaged {damage.stage} {damage.key} cached"
    return None


def _sample(cases: list, n: str | None, seed: int) -> list:
    if n == "all":
        return cases
    return random.Random(seed).sample(cases, min(int(n or 40), len(cases)))


def test_every_damage_is_one_line_in_every_command_that_reads_it(full_run_pristine, tiny_data, cli, tmp_path):
    image = sorted((tiny_data / "disc" / "test").rglob("*.png"))[0]
    cases = [(d, c) for d in damages(full_run_pristine) for c in COMMANDS]
    assert len(cases) > 2000 and len({d.name for d, _ in cases}) > 200  # the product, not a list
    chosen = _sample(cases, os.environ.get("DRDC_DAMAGE_CASES"), int(os.environ.get("DRDC_DAMAGE_SEED", "0")))
    failures = []
    for i, (d, c) in enumerate(chosen):
        tmp = tmp_path / str(i)
        tmp.mkdir()
        why = check_case(cli, full_run_pristine, tiny_data, image, tmp, d, c)
        if why:
            failures.append(f"{d.name} x {c}: {why}")
        shutil.rmtree(tmp, ignore_errors=True)
    assert not failures, f"{len(failures)} of {len(chosen)} cases:\n" + "\n".join(failures)


@pytest.mark.parametrize("kind", ["flip", "missing"])
def test_a_damaged_chunk_names_its_entry_and_the_fix_that_brings_it_back(kind, full_run, cli):
    """The issue's case: `score --source base` with one damaged h_base chunk. One line naming the entry, the array
    and the chunk, nothing left behind; and the quoted commands bring the result back."""
    import re
    import shlex

    from stages.store.cache import RunStore

    ib = RunStore(full_run).current("infer_base")
    _chunk(str((ib.path / "h_base" / "c" / "1" / "0" / "0").relative_to(full_run)), kind)(full_run)
    entries = sorted(p.name for p in (full_run / "score").iterdir())
    res = cli("score", "--run", full_run, "--source", "base", "--pool", "8", code=1)
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert f"infer-base {ib.key}" in line and "array h_base chunk 1 (rows 8-15)" in line, line
    assert sorted(p.name for p in (full_run / "score").iterdir()) == entries  # no partial score entry
    for cmd in re.findall(r"`(drdc [^`]+)`", line):
        cli(*shlex.split(cmd)[1:])
    cli("score", "--run", full_run, "--source", "base", "--pool", "8")
