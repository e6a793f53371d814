"""The domain of every command-line option, checked before a command does any work or write.

`check_options` runs in `guarded` (every command): each given value is checked against its flag's domain, so an
out-of-domain value is one ConfigError line naming the option, the rule and the value, whatever the command.
A stage's settings declare their domains once, on their Params fields (stages.config.settings); the options made
from them carry those (drdc_cli.generate), and so do bound's (stages.apps.choices.BoundParams) and the synthetic
data's (stages.data.choices.SyntheticSpec). The table here holds the rest: paths, outputs, the device, the
all-in-one commands' shortcuts to a stage's setting. `tests/test_option_domains.py` fails for an option that has neither. Rules that
join two options (--hidden-dim % --heads, a grid against the image size) live in the stages' Params, which see
the preset's values too.
"""
from __future__ import annotations

import functools
import inspect
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from stages.config.domains import Choice, Int, List, Real, Text, _fail, numbers, split  # noqa: F401 (re-exported)


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
    """The options that are not a stage's setting (paths, outputs, the all-in-one commands' own sizes); a stage's
    settings carry their domains on their Params fields (stages.config.settings, drdc_cli.generate)."""
    # choices come from the packages that own them, in their torch-free vocabulary modules (checking an option
    # never loads torch: tests/test_startup.py)
    from stages.apps.choices import FORMATS
    from stages.config.presets import PRESETS
    from stages.config.settings import settings_of
    from stages.pipeline.params import TrainBaseParams, TrainDiffParams

    def setting(cls: type, name: str) -> Any:
        return settings_of(cls)[name][1].domain

    return {
        # data and store
        "--run": Store(), "--data": Given("a dataset root"), "--out": Output("dir"), "DEST": Output("dir"),
        "IMAGES": Given("an image or a folder of images"), "--weights": Existing("file"), "--category": List(None),
        "--preset": Choice(tuple(PRESETS)), "--device": Device(),
        # the all-in-one commands' shortcuts to a stage's setting take that setting's domain (run, demo)
        "--epochs": setting(TrainBaseParams, "epochs"), "--base-epochs": setting(TrainBaseParams, "epochs"),
        "--diff-steps": setting(TrainDiffParams, "steps"),
        # results
        "--csv": Output(), "--json": Output(), "--toml": Output(), "--html": Output(), "--format": Choice(FORMATS),
        "--config": Existing("file"), "--per-image": Output(), "--plots": Output("dir"), "--variant": Text(),
        "--worst": Int(0, 1000), "--fpr": Real(0.0, 1.0, lo_open=True, hi_open=True),
        "--percentile": Real(0.0, 100.0, lo_open=True), "--top": Int(1, 10_000), "--check": Int(0, 10_000),
        # cache
        "--key": Text(),
        # every command (drdc's own options, before the command)
        "--log-file": Output(),
    }


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


def domain_table(fn: Callable[..., Any]) -> dict[str, Any]:
    """{flag: domain} for command `fn`: the options made from Params settings carry their own (drdc_cli.generate);
    the rest come from this module's table."""
    command = inspect.unwrap(fn)
    return {**domains(), **getattr(command, "__domains__", {})}


def check_options(fn: Callable[..., Any], values: dict[str, Any]) -> None:
    """Check every given value (not None, not a bool switch) of command `fn` against its flag's domain."""
    table = domain_table(fn)
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
        for x in (v if isinstance(v, (list, tuple)) and not isinstance(dom, List) else [v]):  # IMAGES: each path
            dom.check(flag, x)
