"""Run files: `drdc config --run R` prints a run's effective settings as TOML; `drdc run --config FILE` runs them.

A run file has one table per stage command, keyed by that command's own flags (without the dashes), plus [run]:

    [run]
    data = "/data/mvtec"        # dataset root (index --data)
    preset = "cpu"              # fills whatever a table leaves out
    [index]
    image-size = 224
    [train-base]
    epochs = 25
    ...

A table's presence runs its stage (infer-base runs after train-base, with the preset's options when it has no
table, and score after infer-base with --source base and after fuse with --source fuse, with [score]'s other
settings, e.g. pool). A table's keys are its stage's settings (stages.config.settings: the flag without dashes)
and the command's own options (--weights). The file is parsed into parameter values, not command-line text:
before anything runs, every key is checked, and an unknown table or key, a wrong type or an out-of-range value is
one error line naming the file, the line and the key. `drdc config` writes every setting an entry was made with
(drdc_cli.commands), so feeding its output back on the same data makes the same keys.
"""
from __future__ import annotations

import inspect
import sys
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from stages.config.registry import STAGES, params_class
from stages.config.settings import settings_of
from stages.errors import ConfigError

from .app import app, guarded, out
from .commands import command_name, options
from .domains import List, domain_table, flags
from .flags import message
from .options import OverwriteOpt, RunOpt

if TYPE_CHECKING:
    from stages.store.cache import RunStore

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

ORDER = tuple(command_name(s.name) for s in STAGES.values() if s.params)  # the tables, in run order
DEVICE = {"extract", "train-base", "infer-base", "train-diff", "infer-diff"}  # commands with --device
PRESET = DEVICE | {"index"}  # commands with --preset
RUN_KEYS = {"data": str, "preset": str, "store": str}
COMMON = {"run", "data", "device", "quiet", "preset"}  # set by [run] and `drdc run`'s own options, not a table


def _callback(name: str):
    return typer.main.get_command(app).commands[name].callback


def _lines(text: str) -> dict[tuple[str, str], int]:
    """{(table, key): line number} of a TOML text (simple tables and bare or quoted keys, as config writes)."""
    where, table = {}, ""
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            table = line.strip("[] ").strip('"')
            where[(table, "")] = n
        elif "=" in line:
            where[(table, line.split("=", 1)[0].strip().strip('"'))] = n
    return where


def _keys(name: str) -> dict[str, tuple[str, type, Any]]:
    """{run-file key: (the command's parameter, its value's type, its domain)} of a table: the stage's settings
    (stages.config.settings: key = flag without dashes) and the command's own options (--weights, --compile)."""
    fn = _callback(name)
    cls = params_class(name.replace("-", "_"))
    hints = {**typing.get_type_hints(inspect.unwrap(fn)), **typing.get_type_hints(cls)}  # a setting: its field's
    table = domain_table(fn)
    out = {}
    for param, (flag, is_bool) in flags(fn).items():
        if param in COMMON or (name == "score" and param == "source"):  # the run scores base, then fuse
            continue
        hint = hints[param]
        args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is not tuple else []
        kind = bool if is_bool else (args[0] if args else hint)
        out[flag.lstrip("-")] = (param, tuple if typing.get_origin(kind) is tuple else kind, table.get(flag))
    return out


def _value(v: Any, kind: type, dom: Any, fail: Callable[[str], None]) -> Any:
    """A TOML value as the parameter's value, checked against its type and domain (fail: one error line)."""
    if kind is bool:
        if not isinstance(v, bool):
            fail(f"must be true or false (got {v!r})")
        return v
    if isinstance(dom, List) or kind is tuple:
        if not isinstance(v, list) or not v:
            fail(f"must be a non-empty list (got {v!r})")
        if any(isinstance(x, bool) or not isinstance(x, (int, float, str)) for x in v):
            fail(f"must hold numbers or names (got {v!r})")
        v = tuple(v)
    elif kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        fail(f"must be an integer (got {v!r})")
    elif kind is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail(f"must be a number (got {v!r})")
        v = float(v)
    elif kind in (str, Path) and not isinstance(v, str):
        fail(f"must be a string (got {v!r})")
    if dom is not None:
        try:
            dom.check("key", v)
        except ConfigError as e:
            fail(e.detail)
    return Path(v) if kind is Path else v


def parse(path: Path) -> tuple[dict, list[tuple[str, dict[str, Any]]]]:
    """([run] table, [(command, {its parameter: value})] in run order), every key checked first: its type and
    domain, and the rules that join a table's keys."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path} ({e.strerror or e})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    where = _lines(text)

    def fail(table: str, key: str, why: str) -> None:
        at = where.get((table, key)) or where.get((table, ""))
        raise ConfigError(f"{path}:{at or '?'}: [{table}] {key + ': ' if key else ''}{why}")

    for table in doc:
        if table != "run" and table not in ORDER:
            fail(table, "", f"unknown table; expected run, {', '.join(ORDER)}")
        if not isinstance(doc[table], dict):
            fail(table, "", "must be a table")
    head = doc.get("run", {})
    for key, v in head.items():
        if key not in RUN_KEYS:
            fail("run", key, f"unknown key; expected {', '.join(RUN_KEYS)}")
        if not isinstance(v, str) or not v:
            fail("run", key, f"must be a non-empty string (got {v!r})")
    if "index" in doc and "data" not in head:
        fail("run", "data", "missing: the dataset root the [index] table reads")
    steps = []
    for name in ORDER:
        if name not in doc:
            continue
        known = _keys(name)
        values: dict[str, Any] = {}
        for key, v in doc[name].items():
            if key not in known:
                fail(name, key, f"unknown key; {name} takes {', '.join(sorted(known))}")
            param, kind, dom = known[key]
            values[param] = _value(v, kind, dom, lambda why, key=key: fail(name, key, why))
        _check_together(name, values, head, fail)
        steps.append((name, values))
    return head, steps


def _check_together(name: str, values: dict, head: dict, fail) -> None:
    """The rules that join a table's keys (--hidden-dim % --heads, a grid against the size ...), checked by
    building the stage's parameters as the command will, before any stage runs."""
    from stages.config.presets import DEFAULT_PRESET, build

    stage = name.replace("-", "_")
    cls = params_class(stage)
    kw = {k: v for k, v in values.items() if k in settings_of(cls)}
    if stage == "index":
        kw["root"] = head.get("data", ".")
    try:
        build(cls, stage, head.get("preset", DEFAULT_PRESET), **kw)
    except ConfigError as e:  # a rule joining keys: the table's line, the key the error names (flag sans dashes)
        fail(name, "", message(e, dashes=False))


def _invoke(name: str, **values: Any) -> None:
    """Run one command with parameter values, through its callback: the same option checks, cache, resume, roll
    back and output as typing it."""
    _callback(name)(**values)


def run_file(path: Path, run: Path | None, device: str, quiet: bool) -> None:
    """Every table of the run file, in pipeline order, through the commands themselves (same checks, cache,
    resume and output as typing them)."""
    head, steps = parse(path)
    store = run or (Path(head["store"]) if "store" in head else None)
    if store is None:
        raise ConfigError(f"--run: give the run store (or store = \"...\" in [run] of {path})")
    if any(n == "train-base" for n, _ in steps) and not any(n == "infer-base" for n, _ in steps):
        at = next(i for i, (n, _) in enumerate(steps) if n == "train-base")
        steps = [*steps[:at + 1], ("infer-base", {}), *steps[at + 1:]]  # the base map the preset makes
    scored = next((dict(v) for n, v in steps if n == "score"), {})
    for name, values in steps:
        if name == "score":
            continue
        common: dict[str, Any] = {"run": store, "quiet": quiet}
        if name == "index":
            common["data"] = Path(head["data"])
        if name in PRESET and "preset" in head:
            common["preset"] = head["preset"]
        if name in DEVICE:
            common["device"] = device
        _invoke(name, **common, **values)
        if name in ("infer-base", "fuse"):
            _invoke("score", run=store, quiet=quiet, **{**scored, "source": "base" if name == "infer-base" else "fuse"})
    if any(n in ("train-base", "fuse") for n, _ in steps):
        _invoke("report", run=store)


def settings(store: RunStore) -> dict[str, dict]:
    """The run file of a store's current entries: every option each was made with."""
    cur = store.current_keys
    doc: dict[str, dict] = {"run": {}}
    get = lambda stage: store.current(stage) if stage in cur else None  # noqa: E731
    index = get("index")
    if index is not None:
        doc["run"] = {"data": index.params["root"], "store": store.name}
    if store.attr("preset"):
        doc["run"]["preset"] = store.attr("preset")
    fused = get("fuse")
    entries = {s: get(s) for s in ("index", "extract", "train_base", "infer_base", "train_diff")}
    for stage, e in entries.items():
        if e is not None:
            doc[command_name(stage)] = _table(stage, e.params)
    if entries["extract"] is not None and entries["extract"].attrs.get("weights_file"):
        doc["extract"]["weights"] = entries["extract"].attrs["weights_file"]
    diffs = [store.get("infer_diff", k) for n, k in (fused.inputs.items() if fused else []) if n.startswith("infer_diff@")]
    if not diffs and "infer_diff" in cur:
        diffs = [store.current("infer_diff")]
    if diffs:  # every grid size the run holds maps of in that variant (tune searched them; fuse may read fewer)
        q = {**diffs[0].params, "c": held_grids(store, diffs[0])}
        doc["infer-diff"] = _table("infer_diff", q)
    if fused is not None:
        doc["fuse"] = _table("fuse", fused.params)
    if "score" in cur:
        doc["score"] = {k: v for k, v in _table("score", store.current("score").params).items() if k != "source"}
    doc.get("index", {}).pop("data", None)  # [run] data
    return doc


def held_grids(store: RunStore, like) -> list[int]:
    """The c of every complete infer-diff entry of the current models with `like`'s settings but its c (the maps a
    rerun of the file must remake: with gamma 0 the fusion itself reads none of them)."""
    same = lambda q: {k: v for k, v in q.items() if k != "c"}  # noqa: E731
    return sorted({e.params["c"] for e in store.entries() if e.stage == "infer_diff" and e.is_complete
                   and e.inputs == like.inputs and same(e.params) == same(like.params)} | {like.params["c"]})


def _table(stage: str, params: dict) -> dict:
    return {flag.lstrip("-"): list(v) if isinstance(v, tuple) else v for flag, v in options(stage, params).items()}


@app.command("config", rich_help_panel="Stages")
@guarded
def config_cmd(run: RunOpt, out_file: Annotated[Optional[Path], typer.Option("--toml", help="Write the run file here (default: print it).")] = None,
               overwrite: OverwriteOpt = False) -> None:
    """Print the run's effective settings as a run file (TOML); `drdc run --config FILE` reproduces its keys."""
    import tomli_w

    from stages.apps.outputs import Outputs
    from stages.store.cache import RunStore

    outs = Outputs(overwrite)
    if out_file is not None:
        outs.claim(out_file, "toml")

    text = ("# drdc run file: `drdc run --config FILE` runs each table's stage with these options\n"
            + tomli_w.dumps(settings(RunStore(run))))
    if out_file is None:
        out.print(text, end="", markup=False, highlight=False, soft_wrap=True)
    else:
        outs.write_text(out_file, text)
        out.print(f"wrote {out_file}")
