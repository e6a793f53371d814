"""Domain errors, and the fixes they name as data. Every failure a user can cause is one of these; the CLI turns
it into one line + exit 1.

The library speaks no command line. A bad setting is a ConfigError that names the *parameter* (`n_s`, `gamma`, a
Params field), never a flag. A message that names a fix holds it as a `Step` (which stage, which run, which
parameters) and a setting it mentions as an `Option`: the library's own text shows them as Python reads them
(`infer_diff(run='r.zarr', t=[250])`, `gamma`), and drdc_cli alone renders flags and `drdc ...` lines
(drdc_cli.commands). A caller that passes tensors of the wrong shape has a bug, not a bad setting: a ValueError.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class Step:
    """A command to run, as data: `stage` on the run store `run` with `params`.

    stage: a pipeline stage ("infer_diff", stages.config.registry) or another job of the toolkit ("calibrate",
    "ablate", "cache_gc", "cache_verify"). run: None leaves the store unnamed. params: {parameter: value}; None: the
    stage's defaults. whole: params are a whole entry's, so the step spells out every setting (the `added` ones at
    their defaults too) and makes that entry's key again whatever the run's preset; False: these options only.
    merge_c: infer-diff entries differing only in c, made by one step. weights: the local weight file an extract
    entry was made from. note: what the step does, said after it."""

    stage: str
    run: str | None = None
    params: Mapping[str, Any] | None = None
    whole: bool = True
    merge_c: tuple[int, ...] | None = None
    weights: str | None = None
    note: str = ""

    def __str__(self) -> str:
        args = [f"run={self.run!r}"] if self.run is not None else []
        args += [f"{k}={v!r}" for k, v in (self.params or {}).items() if v is not None]
        args += [f"c={list(self.merge_c)!r}"] if self.merge_c else []
        args += [f"weights={self.weights!r}"] if self.weights else []
        return f"{self.stage}({', '.join(args)})" + (f"   ({self.note})" if self.note else "")


_UNSET = object()


@dataclass(frozen=True)
class Option:
    """A parameter a message names ("pass `overwrite`"): the CLI shows its flag (`--overwrite`, with `stage` as
    "index --layout", with `value` as "--gamma 0"), the library its name."""

    name: str
    stage: str | None = None
    value: Any = _UNSET

    def __str__(self) -> str:
        text = self.name if self.stage is None else f"{self.stage} {self.name}"
        return text if self.value is _UNSET else f"{text} {self.value}"

    @property
    def has_value(self) -> bool:
        return self.value is not _UNSET


Part = Union[str, Step, Option]
Message = Union[str, Sequence[Part]]  # a text with the steps and options it names, in reading order


def parts_of(message: Message) -> tuple[Part, ...]:
    """A message as its parts (a text is one part)."""
    return (message,) if isinstance(message, str) else tuple(message)


def render(message: Message, step: Callable[[Step], str] | None = None,
           option: Callable[[Option], str] | None = None) -> str:
    """The message as one text: a step quoted in backticks, as `step` spells it (default: its Python form), an
    option as `option` spells it (default: its name)."""
    if isinstance(message, str):
        return message
    step = step or str
    option = option or str
    return "".join(p if isinstance(p, str) else f"`{step(p)}`" if isinstance(p, Step) else option(p)
                   for p in message)


class DrdcError(Exception):
    """Base class: the message is shown to the user as one line, so it must name the culprit. parts: the text and
    the Steps and Options it names (`str(e)` renders them as the library does, drdc_cli as the command line)."""

    exit_code: int = 1

    def __init__(self, *parts: Part) -> None:
        self.parts: tuple[Part, ...] = parts
        super().__init__(render(parts))

    @property
    def steps(self) -> list[Step]:
        """The fixes the message names, in order."""
        return [p for p in self.parts if isinstance(p, Step)]


class DataError(DrdcError):
    """A dataset problem: missing root, wrong layout, unreadable image, bad mask."""


class ConfigError(DrdcError):
    """A bad option or parameter value, an unknown backbone, missing weights. param: the parameter(s) at fault
    ("c", or "fpr/percentile" for several), shown as "param: detail"; None when the message names its culprit.
    detail: a text, or the parts of one (a Message)."""

    exit_code = 2

    def __init__(self, detail: Message, param: str | None = None) -> None:
        self.param = param
        parts = parts_of(detail)
        super().__init__(*((f"{param}: ",) if param else ()), *parts)
        self.detail_parts = parts
        self.detail = render(parts)


class CacheMissError(DrdcError):
    """A stage's input is not in the run store (or is stale); the message names the Step to run."""


class StoreError(DrdcError):
    """The run store itself is unusable: not a drdc store, future schema, locked, read-only."""


class DamageError(StoreError):
    """Part of a run store is damaged (a chunk, a file, an attribute); the message names it and the fix. A
    command stopped by it leaves nothing it created behind."""


def check(cond: bool, param: str, message: Message, value: Any) -> None:
    """Raise a one-line ConfigError naming the parameter, the rule and the offending value."""
    if not cond:
        raise ConfigError((*parts_of(message), f" (got {value!r})"), param)
