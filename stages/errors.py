"""Domain errors. Every failure a user can cause is one of these; the CLI turns it into one line + exit 1."""
from __future__ import annotations


class DrdcError(Exception):
    """Base class: the message is shown to the user as one line, so it must name the culprit."""

    exit_code: int = 1


class DataError(DrdcError):
    """A dataset problem: missing root, wrong layout, unreadable image, bad mask."""


class ConfigError(DrdcError):
    """A bad option or parameter value, an unknown backbone, missing weights."""

    exit_code = 2


class CacheMissError(DrdcError):
    """A stage's input is not in the run store (or is stale); the message names the command to run."""


class StoreError(DrdcError):
    """The run store itself is unusable: not a drdc store, future schema, locked, read-only."""
