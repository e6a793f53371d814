"""The domain of every command-line option, declared once and checked before a command does any work or write.

`check_options` runs in `guarded` (every command): each given value is checked against DOMAINS[flag], so an
out-of-domain value is one ConfigError line naming the option, the rule and the value, whatever the command.
A flag means the same thing in every command that has it (--seed, --gamma, --size ...), so one table serves
all; `tests/test_option_domains.py` fails for an option that has no entry here. Rules that join two options
(--hidden-dim % --heads, a schedule's own parameters, a grid against the image size) live in the stages'
Params, which see the preset's values too.
"""
from __future__ import annotations

import functools
import inspect
import math
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from stages.errors import ConfigError

SEEDS = 2**32  # numpy's seed range: every seed here reaches np.random.seed
BIG = 10**6  # epochs, layers ...: beyond this a value is a typo, not a setting


def _fail(option: str, rule: str, value: Any) -> None:
    raise ConfigError(f"{option}: {rule} (got {value!r})")


@dataclass(frozen=True)
class Int:
    lo: int
    hi: int
    odd: bool = False
    multiple_of: int = 1

    def check(self, option: str, v: Any) -> None:
        if isinstance(v, bool) or not isinstance(v, int):
            _fail(option, "must be an integer", v)
        if not self.lo <= v <= self.hi:
            _fail(option, f"must be in [{self.lo}, {self.hi}]", v)
        if self.odd and v % 2 != 1:
            _fail(option, "must be odd (a centred window)", v)
        if v % self.multiple_of:
            _fail(option, f"must be a multiple of {self.multiple_of}", v)


@dataclass(frozen=True)
class Real:
    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def check(self, option: str, v: Any) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            _fail(option, "must be a finite number", v)
        ok = (self.lo < v if self.lo_open else self.lo <= v) and (v < self.hi if self.hi_open else v <= self.hi)
        if not ok:
            _fail(option, f"must be in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
                          f"{')' if self.hi_open else ']'}", v)


@dataclass(frozen=True)
class Choice:
    values: Sequence[str]

    def check(self, option: str, v: Any) -> None:
        if v not in self.values:
            _fail(option, f"must be one of {', '.join(self.values)}", v)


def split(text: str, option: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']; an empty list or an empty item ('1,,2', '1,') is an error, not a default."""
    items = [v.strip() for v in text.split(",")]
    if not text.strip():
        _fail(option, "needs at least one value", text)
    if any(v == "" for v in items):
        _fail(option, "has an empty item; separate values by single commas", text)
    return items


def numbers(text: str, option: str, kind: type = float) -> tuple:
    """'0.5,0.9' -> (0.5, 0.9) of `kind`; malformed, empty or non-finite lists are one-line errors."""
    items = split(text, option)
    try:
        out = tuple(kind(v) for v in items)
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise ConfigError(f"{option}: expected comma-separated {what} (got {text!r})") from None
    if kind is float and not all(math.isfinite(v) for v in out):
        _fail(option, "must hold finite numbers", text)
    return out


@dataclass(frozen=True)
class List:
    """A comma-separated list; each item must lie in `item`'s domain; `distinct`: a repeated value is an error."""
    item: Int | Real | Choice | None  # None: free names (categories)
    distinct: bool = True

    def check(self, option: str, v: Any) -> None:
        if isinstance(self.item, Int):
            values: Sequence[Any] = numbers(v, option, int)
        elif isinstance(self.item, Real):
            values = numbers(v, option, float)
        else:
            values = split(v, option)
        for x in values:
            if self.item is not None:
                self.item.check(option, x)
        if self.distinct:
            seen = set()
            for x in values:
                if x in seen:
                    _fail(option, f"duplicate value {x}", v)
                seen.add(x)


@dataclass(frozen=True)
class Text:
    """A non-empty name or key (a category, a cache key)."""

    def check(self, option: str, v: Any) -> None:
        if not isinstance(v, str) or not v.strip():
            _fail(option, "must not be empty", v)


@dataclass(frozen=True)
class Existing:
    """A path that must exist: `kind` file, dir or any."""
    kind: str = "any"

    def check(self, option: str, v: Any) -> None:
        p = Path(v)
        if str(v) in ("", "."):
            _fail(option, "needs a path", str(v))
        if not p.exists():
            _fail(option, f"{p} does not exist", str(v))
        if self.kind == "file" and not p.is_file():
            _fail(option, f"{p} is not a file", str(v))
        if self.kind == "dir" and not p.is_dir():
            _fail(option, f"{p} is not a directory", str(v))


@dataclass(frozen=True)
class Output:
    """A path a command will write (`kind` file or dir): its nearest existing ancestor must be a writable
    directory, so the command does not compute for minutes and then fail to save."""
    kind: str = "file"

    def check(self, option: str, v: Any) -> None:
        p = Path(v)
        if str(v) in ("", "."):
            _fail(option, "needs a path", str(v))
        if self.kind == "file" and p.is_dir():
            _fail(option, f"{p} is a directory; give a file name", str(v))
        if self.kind == "dir" and p.exists() and not p.is_dir():
            _fail(option, f"{p} exists and is not a directory", str(v))
        if p.is_file():  # overwritten in place
            if not os.access(p, os.W_OK):
                _fail(option, f"{p} is not writable", str(v))
            return
        up = p.absolute()
        while not up.exists():
            up = up.parent
        if not up.is_dir():
            _fail(option, f"cannot create {p}: {up} is a file", str(v))
        if not os.access(up, os.W_OK | os.X_OK):
            _fail(option, f"cannot create {p}: {up} is not writable", str(v))


@dataclass(frozen=True)
class Given:
    """A path whose existence and content the command checks itself, naming the file at fault as a DataError
    (a dataset root, images to predict): here only that one was given."""
    what: str

    def check(self, option: str, v: Any) -> None:
        if str(v) in ("", "."):
            _fail(option, f"needs the path of {self.what}", str(v))


@dataclass(frozen=True)
class Store:
    """--run: a run store path; whether it must exist is the command's business (index creates it)."""

    def check(self, option: str, v: Any) -> None:
        if str(v) in ("", "."):  # RunStore itself names a file or a foreign folder (a DataError)
            _fail(option, "needs the path of a run store (a .zarr directory)", str(v))


@dataclass(frozen=True)
class Device:
    """--device: auto, cpu, cuda or cuda:N, and present on this machine (checked before any data is made)."""

    def check(self, option: str, v: Any) -> None:
        if v in ("auto", "cpu"):  # always present: no need to load torch to say so
            return
        from stages.pipeline.runtime import resolve_device

        resolve_device(v)


def _domains() -> dict[str, Any]:
    # choices come from the packages that own them, in their torch-free vocabulary modules (a new choice needs no
    # second edit, and checking an option never loads torch: tests/test_startup.py)
    from stages.apps.choices import DOWN_MODES, FORMATS, UP_MODES
    from stages.data.choices import ALL_KINDS, LAYOUTS, RESIZES
    from stages.method.choices import DISTANCES, FUSIONS, INITS, NORMS, RESIDUAL_NORMS
    from stages.models.choices import SUPPORTED
    from stages.pipeline.params import OBJECTIVES, SCHEDULES, SOURCES, TASKS
    from stages.config.presets import PRESETS

    seed = Int(0, SEEDS - 1)
    timesteps = List(Int(0, 999))
    return {
        # data and store
        "--run": Store(), "--data": Given("a dataset root"), "--out": Output("dir"), "DEST": Output("dir"),
        "IMAGES": Given("an image or a folder of images"), "--weights": Existing("file"), "--layout": Choice(LAYOUTS),
        "--categories": List(None), "--category": List(None), "--image-size": Int(32, 2048, multiple_of=16), "--resize": Choice(RESIZES),
        "--size": Int(8, 2048), "--preset": Choice(tuple(PRESETS)), "--device": Device(),
        "--backbone": Choice(SUPPORTED), "--feature-size": Int(2, 64),
        # validation split
        "--val-fraction": Real(0.0, 0.5, hi_open=True), "--val-min": Int(0, 10_000), "--val-defects": Int(0, 16),
        "--val-seed": seed, "--val-kinds": List(Choice(ALL_KINDS), distinct=True),
        # train-base
        "--epochs": Int(0, BIG), "--batch-size": Int(1, 65_536), "--lr": Real(0.0, 10.0, lo_open=True),
        "--weight-decay": Real(0.0, 1.0), "--schedule": Choice(SCHEDULES), "--lr-step": Int(1, BIG),
        "--warmup-epochs": Int(0, BIG), "--grad-clip": Real(0.0, 1e6), "--holdout": Real(0.0, 0.5, hi_open=True),
        "--seed": seed, "--hidden-dim": Int(1, 8192), "--ffn-dim": Int(1, 65_536), "--heads": Int(1, 256),
        "--encoder-layers": Int(1, 64), "--decoder-layers": Int(1, 64), "--dropout": Real(0.0, 1.0, hi_open=True),
        "--neighbor-size": Int(1, 63, odd=True), "--jitter-scale": Real(0.0, 1e3),
        # infer-base
        "--residual-norm": Choice(RESIDUAL_NORMS), "--residual-stages": List(Int(1, 16)),
        # train-diff
        "--steps": Int(1, 10**9), "--ema": Real(0.0, 1.0, hi_open=True), "--grid": List(Int(1, 2048)),
        "--ns": Int(2, 4096), "--t-max": Int(0, 999), "--ckpt-every": Int(1, 10**9), "--model-channels": Int(1, 4096),
        "--channel-mult": List(Int(1, 64), distinct=False), "--res-blocks": Int(1, 64),
        "--attention": List(Int(1, 2048)), "--head-channels": Int(1, 4096), "--task": Choice(TASKS),
        "--chain": timesteps, "--crop": Int(0, 2048), "--diffusion-steps": Int(1, 1000),
        "--beta-start": Real(0.0, 1.0, lo_open=True, hi_open=True), "--beta-end": Real(0.0, 1.0, lo_open=True, hi_open=True),
        # infer-diff, fuse and everything that fuses
        "--t": timesteps, "--c": List(Int(1, 2048)), "--l": List(Int(1, 2048)), "--init": Choice(INITS),
        "--distance": Choice(DISTANCES), "--gamma": Real(0.0, 1.0), "--filter": Int(1, 255, odd=True),
        "--norm": Choice(NORMS), "--pool": Int(1, 256), "--fusion": Choice(FUSIONS), "--gate": Real(0.0, 1e3, lo_open=True),
        "--image-gamma": Real(0.0, 1.0), "--fusions": List(Choice(FUSIONS)), "--image-gammas": List(Real(0.0, 1.0)),
        # results
        "--source": Choice(SOURCES), "--csv": Output(), "--json": Output(), "--toml": Output(), "--html": Output(), "--format": Choice(FORMATS), "--config": Existing("file"), "--per-image": Output(), "--plots": Output("dir"),
        "--variant": Text(), "--worst": Int(0, 1000), "--fpr": Real(0.0, 1.0, lo_open=True, hi_open=True),
        "--percentile": Real(0.0, 100.0, lo_open=True), "--scales": List(Int(1, 2048)),
        "--down": Choice(DOWN_MODES), "--up": Choice(UP_MODES),
        "--objective": Choice(OBJECTIVES), "--norms": List(Choice(NORMS)), "--gammas": List(Real(0.0, 1.0)),
        "--filters": List(Int(1, 255, odd=True)), "--rounds": Int(1, 5), "--eval-size": Int(16, 1024),
        "--top": Int(1, 10_000), "--check": Int(0, 10_000),
        # run, make-data, demo
        "--base-epochs": Int(0, BIG), "--diff-steps": Int(1, 10**9), "--n-train": Int(2, 100_000),
        "--n-test-good": Int(1, 100_000), "--n-test-defect": Int(3, 100_000),
        # cache
        "--key": Text(),
        # every command (drdc's own options, before the command)
        "--log-file": Output(),
    }


def _command_domains() -> dict[str, dict[str, Any]]:
    """Where one flag takes narrower values in one command than the table says (by the command's function name):
    the synthetic data's image side (`make-data`, `demo`: --size) against a diffusion size (`train-diff`)."""
    from stages.data.choices import SYNTHETIC_SIZES

    side = {"--size": Int(*SYNTHETIC_SIZES)}
    return {"make_data": side, "demo": side}


_TABLE: dict[str, Any] | None = None


def domains() -> dict[str, Any]:
    global _TABLE
    if _TABLE is None:
        _TABLE = _domains()
    return _TABLE


@functools.lru_cache(maxsize=None)
def flags(fn: Callable[..., Any]) -> dict[str, tuple[str, bool]]:
    """{python parameter: (its flag as typed, e.g. '--ns' or 'IMAGES' for an argument, is a bool switch)} of a
    typer command function, read from its Annotated typer.Option / typer.Argument declarations."""
    from typer.models import ArgumentInfo, OptionInfo

    hints = typing.get_type_hints(inspect.unwrap(fn), include_extras=True)
    out = {}
    for name, param in inspect.signature(inspect.unwrap(fn)).parameters.items():
        info = next((m for m in getattr(hints.get(name), "__metadata__", ()) if isinstance(m, (OptionInfo, ArgumentInfo))),
                    param.default if isinstance(param.default, (OptionInfo, ArgumentInfo)) else None)
        base = typing.get_args(hints[name])[0] if hasattr(hints.get(name), "__metadata__") else hints.get(name)
        is_bool = base is bool or typing.get_args(base) in ((bool, type(None)),)
        if isinstance(info, ArgumentInfo):
            out[name] = (name.upper(), is_bool)
            continue
        # in Annotated[..., typer.Option("--csv", "-c")] typer keeps the first declaration in `default`
        names = [info.default] if isinstance(getattr(info, "default", None), str) else []
        decls = [d for d in (*names, *(getattr(info, "param_decls", None) or ())) if d.startswith("--")]
        out[name] = ((decls[0].split("/")[0] if decls else "--" + name.rstrip("_").replace("_", "-")), is_bool)
    return out


def check_options(fn: Callable[..., Any], values: dict[str, Any]) -> None:
    """Check every given value (not None, not a bool switch) of command `fn` against its flag's domain."""
    table = {**domains(), **_command_domains().get(inspect.unwrap(fn).__name__, {})}
    given = []
    for name, (flag, is_bool) in flags(fn).items():
        v = values.get(name)
        if v is None or is_bool:
            continue
        dom = table.get(flag)
        if dom is None:  # a bug, caught by tests/test_option_domains.py, never a user's error
            raise KeyError(f"option {flag} has no domain in drdc_cli/domains.py")
        given.append((flag, dom, v))
    # a device is checked last: asking torch whether cuda is present takes seconds, a typo elsewhere is found first
    for flag, dom, v in sorted(given, key=lambda g: isinstance(g[1], Device)):
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            dom.check(flag, x)
