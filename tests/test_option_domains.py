"""Every option of every command, walked: out-of-domain values, an option given twice, and the combinations
that join two options are each refused with one line, a non-zero exit, before any work and with no write.

The commands and their options come from typer itself, so a new option is walked without an edit here. The
oracle is this file's, not drdc_cli/domains.py's: a negative, NaN, infinite, absurdly large or mistyped number
is refused by every option; 0 is refused except by the options in ZERO_OK (where 0 means "off" or "none").
Work is detected, not waited for: `RunStore.begin` (every stage's first write) and the synthetic data maker
raise WorkStarted, so an accepted bad value fails its test at once instead of training for an hour.
"""
from __future__ import annotations

import inspect
import os
import typing
from pathlib import Path

import pytest
import torch
import typer

from drdc_cli.app import app, register_commands
from drdc_cli.domains import Choice, Device, List, domain_table, domains, flags
from stages.store.cache import RunStore

from conftest import copy_run

register_commands()
ROOT = typer.main.get_command(app)

ZERO_OK = {  # 0 is a real setting of these, the rest must refuse it
    "--val-fraction", "--val-min", "--val-defects",  # no validation split
    "--val-seed", "--seed",  # a seed
    "--weight-decay", "--warmup-epochs", "--grad-clip", "--holdout", "--dropout", "--jitter-scale", "--ema",  # off
    "--t-max",  # train only t = 0
    "--crop",  # train on the whole image
    "--gamma",  # base only
    "--worst",  # no worst-case pictures
    "--check",  # export without checking it
    "--epochs", "--base-epochs",  # the untrained, seeded transformer (the base curve's first point)
    "--image-gamma",  # image scores from the base map alone
}
HUGE_INT, HUGE_REAL = "99999999999999999999", "1e300"


class WorkStarted(Exception):
    """Raised where a command would start work: the values it was given passed every check."""


def _commands(cmd=ROOT, path=()) -> dict[tuple[str, ...], typing.Any]:
    if hasattr(cmd, "commands"):
        out = {}
        for name, sub in cmd.commands.items():
            out.update(_commands(sub, (*path, name)))
        return out
    return {path: cmd}


COMMANDS = _commands()


def _kind(fn, name: str) -> str:
    hint = typing.get_type_hints(inspect.unwrap(fn))[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    t = args[0] if args else hint
    if typing.get_origin(t) is list:
        t = typing.get_args(t)[0]
    return t.__name__


def hostile(flag: str, kind: str, table: dict) -> list[str]:
    """Values outside `flag`'s domain, by the kind of value it takes."""
    if kind == "int":
        return [v for v in ("0", "-1", HUGE_INT, "abc", "1.5", "") if v != "0" or flag not in ZERO_OK]
    if kind == "float":
        return [v for v in ("0", "-1", HUGE_REAL, "nan", "inf", "-inf", "abc", "") if v != "0" or flag not in ZERO_OK]
    if kind == "Path":
        return ["", "/proc/version/x"]  # nothing: and below a file, where no file can be read or made
    dom = table[flag]
    if isinstance(dom, List):
        out = ["", ",", "1,,2", "1,"]
        if dom.item is not None and not isinstance(dom.item, Choice):
            out += ["abc", "-1", HUGE_INT, "nan"]
        if dom.distinct:
            out.append("3,3" if not isinstance(dom.item, Choice) else f"{dom.item.values[0]},{dom.item.values[0]}")
        return out
    if isinstance(dom, Choice):
        return ["bogus", ""]
    if isinstance(dom, Device):
        return ["bogus", "cuda:x", ""]
    return [""]  # names, keys, devices


@pytest.fixture(scope="module")
def store(full_run_pristine, tmp_path_factory) -> Path:
    return copy_run(full_run_pristine, tmp_path_factory.mktemp("walk") / "r.zarr")


@pytest.fixture()
def no_work(monkeypatch):
    def refuse(*a, **k):
        raise WorkStarted()

    monkeypatch.setattr(RunStore, "begin", refuse)
    import stages.data.synthetic

    monkeypatch.setattr(stages.data.synthetic, "make_dataset", refuse)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[os.path.relpath(os.path.join(d, f), root)] = (st.st_size, st.st_mtime_ns)
    return out


def _base(path: tuple[str, ...], store: Path, tiny_data: Path, new: Path) -> list:
    """The rest of a command line that is valid, so that only the walked option can be wrong."""
    image = sorted((tiny_data / "disc" / "test").rglob("*.png"))[0]
    return {("index",): ["--data", tiny_data, "--run", new], ("run",): ["--data", tiny_data, "--run", new],
            ("bound",): ["--data", tiny_data], ("predict",): [image, "--run", store], ("make-data",): [new],
            ("demo",): ["--out", new], ("export",): ["--run", store, "--out", new]}.get(path, ["--run", store])


def _refused(res, args) -> str:
    lines = [ln for ln in res.stderr.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    assert not isinstance(res.exception, WorkStarted), f"{args}: accepted, and work started"
    assert res.exit_code != 0, f"{args}: exit 0\n{res.output}"
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output, f"{args}: {res.exception!r}"
    assert len(lines) == 1, f"{args}: {len(lines)} lines\n{res.stderr}"
    return lines[0]


def test_every_option_has_a_domain():
    missing = [f"{' '.join(p)} {flag}" for p, cmd in COMMANDS.items()
               for flag, is_bool in flags(cmd.callback).values() if not is_bool and flag not in domain_table(cmd.callback)]
    assert not missing, f"options with no domain (neither a setting's nor drdc_cli/domains.py's): {missing}"


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_out_of_domain_values_are_refused(path, store, tiny_data, tmp_path, cli, no_work):
    cmd = COMMANDS[path]
    new = tmp_path / "new"
    before = _snapshot(store)
    tried = 0
    for name, (flag, is_bool) in flags(cmd.callback).items():
        if is_bool or flag in ("--run", "--data", "IMAGES", "DEST") or (flag == "--out" and path in (("demo",), ("export",))):
            continue  # the base command line's own paths, walked by the rejected-dataset tests
        for v in hostile(flag, _kind(cmd.callback, name), domain_table(cmd.callback)):
            args = [*path, *_base(path, store, tiny_data, new), flag, v]
            line = _refused(cli(*args, code=None), args)
            assert flag in line or "Invalid value" in line, f"{args}: the line does not name {flag}: {line}"
            assert not new.exists(), f"{args}: left {new} behind"
            tried += 1
    assert _snapshot(store) == before, f"{' '.join(path)}: a refused value changed the store"
    assert tried or len(flags(cmd.callback)) <= 3, f"{' '.join(path)}: no option walked"


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_an_option_given_twice_is_refused(path, store, cli, no_work):
    """Typer would keep the last of two values silently; here both spellings of a --x/--no-x switch count too."""
    cmd = COMMANDS[path]
    for p in cmd.params:
        if p.param_type_name != "option" or p.multiple or p.name == "help":
            continue
        a, b = p.opts[0], (p.secondary_opts or p.opts)[0]
        twice = [a, b] if p.is_flag else [a, "1", b, "2"]
        res = cli(*path, "--run", store, *twice, code=2)
        line = _refused(res, twice)
        assert "given twice" in line and p.opts[0] in line, line


CUDA = torch.cuda.is_available()
COMBOS = [  # options valid one by one, wrong together (or wrong for this run / this machine)
    (["train-base", "--hidden-dim", "30", "--heads", "4"], "--hidden-dim: must be divisible by nhead=4"),
    (["train-base", "--schedule", "step", "--lr-step", "0"], "--lr-step"),
    (["train-base", "--neighbor-size", "63"], "neighbor_size=63 must be < feature_size=8"),
    (["train-diff", "--size", "32", "--grid", "64"], "--grid: 64 does not divide the image size 32"),
    (["train-diff", "--size", "32", "--grid", "1,32", "--ns", "2"], "--ns: 2 sets need at least 2 grid cells"),
    (["train-diff", "--size", "32", "--channel-mult", "1,2,2,2,2,2,2"], "image_size=32 must be divisible"),
    (["train-diff", "--size", "32", "--channel-mult", "1,2", "--attention", "5"], "attention_resolutions entry 5"),
    (["infer-diff", "--c", "32", "--ns", "3"], "--ns: 3 sets need at least 3 grid cells"),
    (["infer-diff", "--l", "3"], "--l: must divide the diffusion size 32"),
    (["infer-diff", "--c", "7"], "--c: 7 does not divide the image size 32"),
    (["calibrate", "--fpr", "0.1", "--percentile", "99"], "--fpr/--percentile: give one of them"),
    (["calibrate", "--base-only", "--t", "50"], "--base-only"),
    (["predict", "--base-only", "--gamma", "0.5"], "--base-only scores H_base alone, so --gamma"),
    (["predict", "--category", "nosuch"], "--category: 'nosuch' is not a category of this run"),
    (["bound", "--data", "DATA"], "--data / --run: give exactly one"),
    (["index", "--categories", "disc,disc"], "--categories: duplicate value disc"),
    (["index", "--categories", "nosuch"], "no category nosuch"),
    (["make-data", "--n-test-defect", "2"], "--n-test-defect: must be >= 3 so every defect type of the chosen categories gets an image"),
    pytest.param(["run", "--device", "cuda"], "--device: 'cuda' requested but no CUDA device",
                 marks=pytest.mark.skipif(CUDA, reason="this machine has CUDA")),
]


@pytest.mark.parametrize("args,needle", COMBOS, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_combinations_are_refused(args, needle, store, tiny_data, tmp_path, cli, no_work):
    new = tmp_path / "new"
    path = (args[0],)
    rest = [tiny_data if a == "DATA" else a for a in args[1:]]
    base = [a for a in _base(path, store, tiny_data, new)]
    if path == ("bound",):
        base = ["--run", store]
    before = _snapshot(store)
    line = _refused(cli(*path, *base, *rest, code=None), args)
    assert needle in line, line
    assert _snapshot(store) == before and not new.exists()


SINGLE_RULES = ("must be in [", "must be <=", "must be >=", "must be an integer >=", "must be a multiple of 16 in [")


def test_every_limit_a_message_names_is_the_one_enforced():
    """An option's domain and the parameters it becomes agree on its limits: each end of every numeric domain is
    taken by the parameters of every stage (and the synthetic data) that have the option, or refused only by a
    rule that joins it to another option. Else a message would name a limit that is not the one enforced."""
    from dataclasses import fields

    from drdc_cli.domains import Int, Real
    from drdc_cli.flags import flag
    from stages.apps.bound import BoundParams
    from stages.config.settings import settings_of
    from stages.data.synthetic import SyntheticSpec
    from stages.errors import ConfigError
    from stages.pipeline.extract import ExtractParams
    from stages.pipeline.index import IndexParams
    from stages.pipeline.infer_base import InferBaseParams
    from stages.pipeline.infer_diff import InferDiffParams
    from stages.pipeline.score import ScoreParams
    from stages.pipeline.selection import FuseParams
    from stages.pipeline.train_base import TrainBaseParams
    from stages.pipeline.train_diff import TrainDiffParams
    from stages.pipeline.tune import TuneParams
    from stages.config.presets import build

    makers = [("index", lambda **kw: build(IndexParams, "index", "cpu", root="r", **kw), IndexParams, {}),
              ("extract", lambda **kw: build(ExtractParams, "extract", "cpu", **kw), ExtractParams, {}),
              ("train_base", lambda **kw: build(TrainBaseParams, "train_base", "cpu", **kw), TrainBaseParams, {}),
              ("infer_base", lambda **kw: build(InferBaseParams, "infer_base", "cpu", **kw), InferBaseParams, {}),
              ("train_diff", lambda **kw: build(TrainDiffParams, "train_diff", "cpu", **kw), TrainDiffParams, {}),
              ("infer_diff", lambda **kw: build(InferDiffParams, "infer_diff", "cpu", **kw), InferDiffParams, {}),
              ("fuse", FuseParams, FuseParams, {}), ("score", ScoreParams, ScoreParams, {}),
              ("tune", TuneParams, TuneParams, {}), ("bound", BoundParams, BoundParams, {}),
              ("make_data", SyntheticSpec, SyntheticSpec, {})]
    table = domains()
    checked, bad = 0, []
    for name, make, cls, own in makers:
        for f in fields(cls):
            fl = {"n_s": "--ns", "image_size": "--image-size"}.get(f.name, flag(f.name))
            declared = settings_of(cls).get(f.name)
            dom = own.get(fl, declared[1].domain if declared else table.get(fl))
            if not isinstance(dom, (Int, Real)) or isinstance(f.default, (tuple, bool)) or f.name == "seed":
                continue
            ends = [dom.lo, dom.hi] if isinstance(dom, Int) else [
                v for v, open_ in ((dom.lo, dom.lo_open), (dom.hi, dom.hi_open)) if not open_]
            for v in ends:
                checked += 1
                try:
                    make(**{f.name: type(f.default)(v) if f.default is not None else v})
                except ConfigError as e:
                    text = str(e)
                    joined = any(other in text for other in ("=", "divisible by", "grid cells", "reachable", "divide"))
                    if any(rule in text for rule in SINGLE_RULES) and not joined:
                        bad.append(f"{name} {fl} {v}: the domain takes it, the parameters say: {text}")
    assert checked > 40 and not bad, f"{len(bad)} of {checked}:\n" + "\n".join(bad)
