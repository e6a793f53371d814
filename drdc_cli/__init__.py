"""The `drdc` command line (typer): parses options, calls the library `stages`, prints what happened.

`main` is the console script's entry point. It only installs the start-up signal handlers before anything is
imported, so that Ctrl-C (or SIGTERM) at any moment, start-up included, ends in one line and never in a traceback.
"""
from __future__ import annotations

import os
import signal


def _stopped_at_start(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM before a command runs: nothing was read or written yet, so nothing to save or undo."""
    how = "interrupted" if signum == signal.SIGINT else "terminated"
    os.write(2, f"{how}: drdc was starting; nothing was done\n".encode())
    os._exit(128 + signum)


def quiet_start() -> None:
    """Until the command runs (drdc_cli.app.main installs its own handlers), a signal ends drdc in one line. A
    signal the parent ignores (a background job of a script, nohup) stays ignored."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) not in (signal.SIG_IGN, _stopped_at_start):
            signal.signal(sig, _stopped_at_start)


def handle(sig: int, handler: object) -> None:
    """Install a handler for a signal drdc catches (not one the parent made it ignore)."""
    if signal.getsignal(sig) != signal.SIG_IGN:
        signal.signal(sig, handler)  # type: ignore[arg-type]


def main() -> None:
    quiet_start()
    from .app import main as run  # typer, rich and the command modules: tens of milliseconds, interruptible

    run()
