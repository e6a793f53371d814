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
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup, TyperOption

from stages.errors import DrdcError

from . import flags, logs

if TYPE_CHECKING:
    from stages.pipeline.runtime import StageResult


class Switch(TyperOption):
    """An on/off flag (--x, or --x/--no-x): it takes no value, so its help row shows no `<bool>` placeholder."""

    def display_type_rich(self, ctx: Any) -> None:
        return None


def plain_switches(params: list) -> list:
    """`params` with every flag shown as a Switch (typer builds each option as a TyperOption)."""
    for p in params:
        if type(p) is TyperOption and p.is_flag:
            p.__class__ = Switch
    return params


def complete_choices(params: list, callback: Callable[..., Any] | None = None) -> list:
    """Shell completion of the values of every option whose domain is a choice (--norm, --layout, --preset ...),
    from the command's domains (drdc_cli/domains.py and its settings' own; torch-free)."""
    from .domains import Choice, domain_table, domains

    table = domain_table(callback) if callback is not None else domains()
    for p in params:
        dom = table.get(next((o for o in getattr(p, "opts", ()) if o.startswith("--")), ""))
        if isinstance(dom, Choice) and getattr(p, "_custom_shell_complete", False) is None:
            p._custom_shell_complete = lambda ctx, param, incomplete, v=tuple(dom.values): [
                x for x in v if x.startswith(incomplete)]
    return params


class Command(TyperCommand):
    """A command as typer builds it, whose help shows switches as switches and whose choices complete."""

    def get_params(self, ctx: Any) -> list:
        return complete_choices(plain_switches(super().get_params(ctx)), self.callback)


class StrictGroup(TyperGroup):
    """The command groups' parsing, with two house rules: a usage error (a wrong type, an unknown option, a
    missing value) is one line on stderr, as every other error is; an option given twice is an error, not a
    silent 'the last one wins'. Help shows switches (--x/--no-x, --quiet) without a value placeholder."""

    def get_params(self, ctx: Any) -> list:
        return plain_switches(super().get_params(ctx))

    def get_command(self, ctx: Any, name: str) -> Any:
        cmd = super().get_command(ctx, name)
        if type(cmd) is TyperCommand:
            cmd.__class__ = Command
        return cmd

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """The group's own options (before the command's name) may not repeat either."""
        valued = {o for p in self.get_params(ctx) if p.param_type_name == "option" and not p.is_flag for o in p.opts}
        head, i = [], 0
        while i < len(args) and args[i].startswith("-") and args[i] != "--":
            head.append(args[i])
            i += 1 + (args[i] in valued)
        refuse_repeats(self, head, ctx.command_path)
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple:
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None and not isinstance(cmd, TyperGroup):
            refuse_repeats(cmd, rest, f"{ctx.command_path} {name}")
        return name, cmd, rest

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        from typer import Abort
        from typer._click.exceptions import ClickException  # typer 0.29 vendors click; no public alias

        global _depth
        _depth += 1
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
        finally:
            _depth -= 1
            if _depth == 0:  # the outermost command is done (`run --config` calls the others through here)
                logs.stop()
        code = rv if isinstance(rv, int) else 0
        if not standalone_mode:
            return code
        sys.exit(code)


_depth = 0  # StrictGroup.main calls in progress: the log closes when the outermost one ends


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
    add_completion=True,  # --install-completion, --show-completion (bash, zsh, fish, PowerShell)
)
cache_app = typer.Typer(cls=StrictGroup, help="Inspect the run store.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

out = logs.Output(highlight=False)  # full-length lines into a file or a pipe; copied to --log-file
err = logs.Output(stderr=True, highlight=False, level=logs.logging.WARNING)


def _version(value: bool) -> None:
    if value:
        from stages import __version__

        out.print(f"drdc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="DEBUG details (options, entries reused or made, device, timings, tracebacks of errors): into --log-file, else on stderr.")] = False,
    log_file: Annotated[Optional[Path], typer.Option(help="Append every message the command prints (plain text, timestamped) to this file; it is never replaced.")] = None,
) -> None:
    """Multi-class industrial anomaly detection with Diffusion Refinement with Dual Conditions (DRDC)."""
    try:
        from .domains import check_options

        check_options(_root, {"log_file": log_file})
        if log_file is not None or verbose:  # a command `run --config` calls keeps the log its caller opened
            logs.start(log_file, verbose)
    except DrdcError as e:
        err.print(f"[bold red]error:[/] {escape(flags.message(e))}", soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except OSError as e:
        err.print(f"[bold red]error:[/] --log-file: cannot open {log_file} ({e.strerror or e})", soft_wrap=True)
        raise typer.Exit(2) from None


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

        t0 = time.perf_counter()
        forget_active()  # what the library registered outside a command is not this command's to roll back
        try:
            from .domains import check_options

            check_options(fn, kwargs)  # every option in its domain before any work or write
            logs.LOG.debug("options: %s", ", ".join(f"{k}={v!r}" for k, v in kwargs.items()))
            result = fn(*args, **kwargs)
            logs.LOG.info("finished in %.1f s", time.perf_counter() - t0)
            return result
        except DrdcError as e:
            logs.LOG.debug("after %.1f s:", time.perf_counter() - t0, exc_info=True)
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
                _log_bug()
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
        except Exception as e:
            if not isinstance(e, (typer.Exit, typer.Abort)):
                _log_bug()
            raise
        finally:
            release_all()
            forget_active()

    return wrapper


def _log_bug() -> None:
    """The traceback of an unexpected exception (a bug: it keeps its traceback on the terminal too) into the log."""
    if logs.active():
        logs.LOG.exception("a bug (please report it with this traceback):")


def _out_of_memory(e: BaseException) -> bool:
    torch = sys.modules.get("torch")  # not loaded: then torch raised nothing (and loading it here costs seconds)
    text = str(e)
    return (isinstance(e, MemoryError) or (torch is not None and isinstance(e, torch.OutOfMemoryError))
            or "can't allocate memory" in text or "out of memory" in text.lower())


def report_stage(r: StageResult) -> None:
    from stages.pipeline import dist

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
    """Run the app. Ctrl-C while options are parsed is one "aborted" line (StrictGroup), while a command runs one
    line saying what is saved (guarded), and at any other moment one line too, never a traceback."""
    from . import handle, quiet_start

    quiet_start()  # the console script installed these already; `python -m` and older scripts come here first
    register_commands()
    handle(signal.SIGTERM, _on_sigterm)
    handle(signal.SIGINT, signal.default_int_handler)
    try:
        app()
    except KeyboardInterrupt as e:  # between the steps that handle it themselves
        err.print("[yellow]terminated[/]" if isinstance(e, Terminated) else "[yellow]interrupted[/]")
        sys.exit(143 if isinstance(e, Terminated) else 130)
