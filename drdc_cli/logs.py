"""What the command line prints, and where else it goes: the consoles, `--log-file` and `--verbose`.

Printed output reads well wherever it lands: on a terminal rich wraps at the terminal's width; written to a
file or a pipe every line is as long as its content (rich would otherwise fall back to 80 columns, or to a
narrow terminal's width, and cut table cells to `m…`), so a logged or piped table is always complete.

`drdc --log-file PATH` appends (never replaces) to PATH every message the command prints, as plain text with a
timestamp, after a header line naming the command; `--verbose` adds DEBUG details (the options given, the entries
the run store reuses or creates, the device, timings, an error's traceback), to the log file or, without one, to
stderr. The library logs through `logging.getLogger("stages....")`; it never knows about these options.
"""
from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console, ConsoleDimensions

WIDE = 10_000  # columns of a console that is not a terminal: wider than any line drdc prints
LOG = logging.getLogger("drdc")  # what the command line prints (INFO: stdout, WARNING/ERROR: stderr)
LIBRARY = logging.getLogger("stages")  # the library's DEBUG details
FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
_handlers: list[logging.Handler] = []


class Output(Console):
    """A rich Console that prints full-length lines when it is not a terminal and copies every message it
    prints, as plain text, to the log (`--log-file`) when one is open."""

    def __init__(self, *args: Any, level: int = logging.INFO, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._level = level

    def _size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        return size if self.is_terminal else ConsoleDimensions(WIDE, size.height)

    size = property(_size, Console.size.fset)  # type: ignore[attr-defined,assignment]

    def print(self, *objects: Any, **kwargs: Any) -> None:  # noqa: A003
        super().print(*objects, **kwargs)
        if _handlers and LOG.isEnabledFor(self._level):
            text = plain(*objects, **kwargs)
            level = logging.ERROR if text.startswith("error:") else self._level
            LOG.log(level, text)


def plain(*objects: Any, **kwargs: Any) -> str:
    """What `Console.print(*objects, **kwargs)` shows, as plain text without colours or trailing newline."""
    buf = io.StringIO()
    c = Output(file=buf, color_system=None, highlight=False, emoji=False, force_terminal=False)
    kwargs = {k: v for k, v in kwargs.items() if k in ("sep", "markup", "soft_wrap", "justify", "overflow",
                                                      "no_wrap", "crop", "style")}
    Console.print(c, *objects, **kwargs)
    return buf.getvalue().rstrip("\n")


class _DebugOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.INFO


def start(log_file: Path | None, verbose: bool) -> None:
    """Open the log for this command: `log_file` (appended to) and/or DEBUG details on stderr (--verbose)."""
    stop()
    if log_file is None and not verbose:
        return
    fmt = logging.Formatter(FORMAT + (f" [rank {os.environ['RANK']}]" if "RANK" in os.environ else ""))
    if log_file is not None:
        h: logging.Handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")  # never replaces a file
        h.setLevel(logging.DEBUG if verbose else logging.INFO)
        h.setFormatter(fmt)
        _handlers.append(h)
    elif verbose:  # the printed messages are on the terminal already: only the details join them
        h = logging.StreamHandler(sys.stderr)
        h.addFilter(_DebugOnly())
        h.setFormatter(logging.Formatter("%(asctime)s debug: %(message)s"))
        _handlers.append(h)
    for logger in (LOG, LIBRARY):
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        logger.propagate = False
        for h in _handlers:
            logger.addHandler(h)
    from stages import __version__

    LOG.info("drdc %s: %s (pid %d, python %s)", __version__, " ".join(["drdc", *sys.argv[1:]]), os.getpid(),
             sys.version.split()[0])


def stop() -> None:
    """Close the log (the next command in this process, e.g. a test's, starts without one)."""
    for logger in (LOG, LIBRARY):
        for h in _handlers:
            logger.removeHandler(h)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    for h in _handlers:
        h.close()
    _handlers.clear()


def active() -> bool:
    return bool(_handlers)
