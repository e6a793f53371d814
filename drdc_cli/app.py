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
from rich.markup import escape
from typer.core import TyperGroup

from stages.errors import DrdcError
from stages.store.common import StageResult

from . import flags


class StrictGroup(TyperGroup):
    """The command groups' parsing, with two house rules: a usage error (a wrong type, an unknown option, a
    missing value) is one line on stderr, as every other error is; an option given twice is an error, not a
    silent 'the last one wins'."""

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple:
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None and not isinstance(cmd, TyperGroup):
            refuse_repeats(cmd, rest, f"{ctx.command_path} {name}")
        return name, cmd, rest

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        from typer import Abort
        from typer._click.exceptions import ClickException  # typer 0.29 vendors click; no public alias

        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # a bare `drdc` or `drdc cache`: the help page
                e.show()
            else:
                what = " ".join(e.format_message().split()).rstrip(".")
                where = getattr(getattr(e, "ctx", None), "command_path", None)
                hint = f"; see `{where} --help`" if where else ""
                err.print(f"[bold red]error:[/] {escape(what)}{hint}", soft_wrap=True)
            rv = e.exit_code
        except Abort:
            err.print("[yellow]aborted[/]")
            rv = 1
        code = rv if isinstance(rv, int) else 0
        if not standalone_mode:
            return code
        sys.exit(code)


def refuse_repeats(cmd: Any, args: list[str], path: str) -> None:
    """Raise a UsageError naming an option that `args` gives twice (both spellings of a --x/--no-x switch
    count as the same option); options declared to repeat (multiple) may."""
    from typer._click.exceptions import UsageError

    owner: dict[str, Any] = {}
    for p in cmd.params:
        if p.param_type_name == "option" and not p.multiple:
            for o in (*p.opts, *p.secondary_opts):
                owner[o] = p
    seen: dict[str, str] = {}
    for a in args:
        if a == "--":
            break
        p = owner.get(a.split("=", 1)[0])
        if p is None:
            continue
        typed = a.split("=", 1)[0]
        if p.name in seen:
            also = "" if typed == seen[p.name] else f" (as {seen[p.name]} and {typed})"
            raise UsageError(f"{path}: option {seen[p.name]} given twice{also}; give it once (see `{path} --help`)")
        seen[p.name] = typed


app = typer.Typer(
    cls=StrictGroup,
    name="drdc",
    help="Multi-class industrial anomaly detection with Diffusion Refinement with Dual Conditions (DRDC).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
cache_app = typer.Typer(cls=StrictGroup, help="Inspect the run store.", no_args_is_help=True)
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
        from stages.errors import DamageError, DataError
        from stages.store.locks import release_all
        from stages.store.rollback import active_summary, forget_active, roll_back

        forget_active()  # what the library registered outside a command is not this command's to roll back
        try:
            from .domains import check_options

            check_options(fn, kwargs)  # every option in its domain before any work or write
            return fn(*args, **kwargs)
        except DrdcError as e:
            roll_back(dataset_error=isinstance(e, DataError), everything=isinstance(e, DamageError))
            err.print(f"[bold red]error:[/] {escape(flags.message(e))}", soft_wrap=True)  # [table] is text, not markup
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # the environment, not a bug: name the file and the reason
            roll_back(dataset_error=False)
            where = f"{e.filename}: " if e.filename else ""
            err.print(f"[bold red]error:[/] {where}{e.strerror or e}; nothing complete was changed, "
                      "rerun the command once this is fixed", soft_wrap=True)
            raise typer.Exit(1) from None
        except (MemoryError, RuntimeError) as e:  # a batch too big for this machine: the user's setting, not a bug
            if not _out_of_memory(e):
                raise
            roll_back(dataset_error=False)
            err.print("[bold red]error:[/] out of memory; lower --batch-size (or the model or image size), or use "
                      "a device with more memory; nothing complete was changed, rerun to resume", soft_wrap=True)
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


def _out_of_memory(e: BaseException) -> bool:
    import torch

    text = str(e)
    return (isinstance(e, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text
            or "out of memory" in text.lower())


def report_stage(r: StageResult) -> None:
    from stages.store import dist

    if not dist.is_main():  # under torchrun every rank finishes the stage; one line is enough
        return
    what = "[dim]cached[/]" if r.cached else f"done in {r.seconds:.1f} s"
    out.print(f"[green]✓[/] {r.stage.replace('_', '-')} [cyan]{r.key}[/] {what}: {r.summary}", soft_wrap=True)


# The modules that declare commands on `app` (typer registers a command when its module is imported); the order
# is that of `drdc --help` within each panel. A new command module is added here (tests/test_layers.py checks).
COMMAND_MODULES = ("ablate_cmd", "bound_cmd", "cache_cmd", "calibrate_cmd", "demo", "export_cmd", "pipeline",
                   "predict_cmd", "report_cmd", "runfile", "tune_cmd", "workflow")


def register_commands() -> None:
    """Import each of COMMAND_MODULES once, which registers its commands on `app`."""
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}")


def main() -> None:
    register_commands()
    signal.signal(signal.SIGTERM, _on_sigterm)
    app()
