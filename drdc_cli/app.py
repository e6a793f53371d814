"""The `drdc` command: a typer app whose commands parse options, call a stage, and print what happened.

Error boundary: a DrdcError (bad data, bad option, missing cache entry) or an OS error (disk full, permission
denied, read-only filesystem) becomes one red line on stderr and a non-zero exit; Ctrl-C or SIGTERM says what is
saved and how to resume. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Any, Callable

import typer
from rich.console import Console

from stages.common import StageResult
from stages.errors import DrdcError

app = typer.Typer(
    name="drdc",
    help="Multi-class industrial anomaly detection with Diffusion Refinement with Dual Conditions (DRDC).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
cache_app = typer.Typer(help="Inspect the run store.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _version(value: bool) -> None:
    if value:
        from stages import __version__

        out.print(f"drdc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Multi-class industrial anomaly detection with Diffusion Refinement with Dual Conditions (DRDC)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (pre-emption, `kill`, a scheduler's time limit) handled like Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _command_line() -> str:
    if "TORCHELASTIC_RUN_ID" in os.environ:  # launched by torchrun: the user reruns the launcher
        return "the same torchrun command"
    return " ".join(["drdc", *sys.argv[1:]])


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn domain and OS errors into one line + exit code; functools.wraps keeps the signature typer reads.
    Every lock the command took is released when it ends, however it ends."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from stages.cache import active_summary, forget_active, roll_back
        from stages.errors import DataError
        from stages.locks import release_all

        try:
            return fn(*args, **kwargs)
        except DrdcError as e:
            roll_back(dataset_error=isinstance(e, DataError))
            err.print(f"[bold red]error:[/] {e}", soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # the environment, not a bug: name the file and the reason
            roll_back(dataset_error=False)
            where = f"{e.filename}: " if e.filename else ""
            err.print(f"[bold red]error:[/] {where}{e.strerror or e}; nothing complete was changed, "
                      "rerun the command once this is fixed", soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as e:
            saved = active_summary() or "nothing was in progress"
            how = "terminated" if isinstance(e, Terminated) else "interrupted"
            err.print(f"[yellow]{how}:[/] saved {saved}; rerun `{_command_line()}` to resume", soft_wrap=True)
            raise typer.Exit(143 if isinstance(e, Terminated) else 130) from None
        finally:
            release_all()
            forget_active()

    return wrapper


def report_stage(r: StageResult) -> None:
    from stages import dist

    if not dist.is_main():  # under torchrun every rank finishes the stage; one line is enough
        return
    what = "[dim]cached[/]" if r.cached else f"done in {r.seconds:.1f} s"
    out.print(f"[green]✓[/] {r.stage.replace('_', '-')} [cyan]{r.key}[/] {what}: {r.summary}", soft_wrap=True)


def register_commands() -> None:
    """Import every module of this package once: each registers its commands on `app` when imported."""
    import importlib
    import pkgutil

    from . import __path__ as pkg_path

    for m in pkgutil.iter_modules(pkg_path):
        if m.name not in ("app", "__main__"):
            importlib.import_module(f"{__package__}.{m.name}")


def main() -> None:
    register_commands()
    signal.signal(signal.SIGTERM, _on_sigterm)
    app()
