"""Domain errors. Every failure a user can cause is one of these; the CLI turns it into one line + exit 1.

A bad setting is a ConfigError that names the *parameter* (`n_s`, `gamma`, a Params field), never a command-line
flag: the library has no flags. The CLI maps parameter to flag in one place (drdc_cli.flags). A caller that
passes tensors of the wrong shape has a bug, not a bad setting: that is a ValueError.
"""
from __future__ import annotations

from typing import Any


class DrdcError(Exception):
    """Base class: the message is shown to the user as one line, so it must name the culprit."""

    exit_code: int = 1


class DataError(DrdcError):
    """A dataset problem: missing root, wrong layout, unreadable image, bad mask."""


class ConfigError(DrdcError):
    """A bad option or parameter value, an unknown backbone, missing weights. param: the parameter(s) at fault
    ("c", or "fpr/percentile" for several), shown as "param: detail"; None when the message names its culprit."""

    exit_code = 2

    def __init__(self, detail: str, param: str | None = None) -> None:
        self.detail, self.param = detail, param
        super().__init__(f"{param}: {detail}" if param else detail)


class CacheMissError(DrdcError):
    """A stage's input is not in the run store (or is stale); the message names the command to run."""


class StoreError(DrdcError):
    """The run store itself is unusable: not a drdc store, future schema, locked, read-only."""


class DamageError(StoreError):
    """Part of a run store is damaged (a chunk, a file, an attribute); the message names it and the fix. A
    command stopped by it leaves nothing it created behind."""


def check(cond: bool, param: str, message: str, value: Any) -> None:
    """Raise a one-line ConfigError naming the parameter, the rule and the offending value."""
    if not cond:
        raise ConfigError(f"{message} (got {value!r})", param)
