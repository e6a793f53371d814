"""A command's options made from a parameters class: one typer option per setting (stages.config.settings).

    @settings_options(TrainBaseParams)  # under the app's command and guarded decorators
    def train_base(given: dict, run: RunOpt, ...) -> None:
        p = build(TrainBaseParams, "train_base", preset, **given)

Each setting's flag, type, help text and help panel come from its declaration, and so does its domain: the
generated function carries {flag: domain} (`__domains__`), which `guarded`'s option check and the run file read.
The command receives `given`, {field: value} of the options typed (lists parsed to tuples), and the options of
its own signature as usual. A new setting on a Params class is a new option of every command made from it.
"""
from __future__ import annotations

import inspect
import re
import types
import typing
from typing import Annotated, Any, Callable, Iterable, Optional

import typer

from stages.config.domains import List
from stages.config.settings import Setting, default_of, flag_name, settings_of

from .options import FUSION_PANEL, MODEL_PANEL, TRAIN_PANEL, VAL_PANEL

PANEL_TITLES = {"model": MODEL_PANEL, "training": TRAIN_PANEL, "validation": VAL_PANEL, "fusion": FUSION_PANEL}


def _kind(hint: Any) -> Any:
    """int, float, str, bool or tuple: the field's type without Optional."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return tuple if typing.get_origin(hint) is tuple else hint


def _help(s: Setting) -> str | None:
    """The setting's help text, followed by its numeric range (from the same domain the check uses)."""
    many = isinstance(s.domain, List)
    dom = s.domain.item if many else s.domain
    rule = dom.describe(many) if hasattr(dom, "describe") else ""
    if rule:
        rule = f"Comma-separated {rule}." if many else f"{rule[0].upper()}{rule[1:]}."
    return " ".join(x for x in (_flags_in(s.help), rule) if x) or None


def _flags_in(help_text: str) -> str:
    """A help text's `{name}` and `{stage.name}` (another setting) as their flags: `--norm`, `train-diff --grid`."""
    from stages.errors import Option

    from .commands import option

    return re.sub(r"\{(?:(\w+)\.)?(\w+)\}", lambda m: option(Option(m[2], m[1])), help_text)


def settings_options(cls: Any, *, only: Iterable[str] | None = None, exclude: Iterable[str] = (),
                     show_defaults: bool = False, panels: dict[str, str | None] | None = None
                     ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the command `fn(given, ...)` with one option per setting of `cls` (those in `only`, none in
    `exclude`). Every option defaults to "not given" (the preset's or the class's value then applies).
    show_defaults: the option's default is the class default, shown in the help (for commands without a preset).
    panels: a setting panel's title in this command (None: the main panel)."""
    hints = typing.get_type_hints(cls)
    titles = {**PANEL_TITLES, **(panels or {})}
    skip, keep = set(exclude), None if only is None else set(only)
    chosen = [(n, f, s) for n, (f, s) in settings_of(cls).items()
              if s.option and n not in skip and (keep is None or n in keep)]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own_hints = typing.get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=own_hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(fn).parameters.values() if p.name != "given"]
        clash = {p.name for p in own} & {n for n, _, _ in chosen}
        if clash:
            raise TypeError(f"{fn.__name__}: options {sorted(clash)} are declared twice")
        made, parsers, domains = [], {}, {}
        for name, f, s in chosen:
            flag, kind = "--" + flag_name(name, s), _kind(hints[name])
            info = dict(help=_help(s), rich_help_panel=titles.get(s.panel) if s.panel else None)
            # a command without a preset shows (and passes) the class default; a list's default is "every cached"
            shown = default_of(f) if show_defaults and kind is not tuple else None
            if show_defaults and kind is tuple and default_of(f):  # shown, not passed: the class default applies
                info["show_default"] = ",".join(map(str, default_of(f)))
            if kind is bool and s.switch:
                ann, default = Annotated[bool, typer.Option(flag, **info)], False
            elif kind is bool:
                ann, default = Annotated[Optional[bool], typer.Option(f"{flag}/--no-{flag[2:]}", **info)], shown
            else:
                ann, default = Annotated[Optional[str if kind is tuple else kind], typer.Option(flag, **info)], shown
            made.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann))
            if s.domain is not None:
                domains[flag] = s.domain
            if isinstance(s.domain, List):
                parsers[name] = lambda v, dom=s.domain, flag=flag: dom.parse(v, flag) if isinstance(v, str) else tuple(v)
        switches = {n for n, f, s in chosen if s.switch}

        def command(*args: Any, **kwargs: Any) -> Any:
            given = {}
            for name, _, _ in chosen:
                v = kwargs.pop(name, None)
                if v is None or (name in switches and v is False):
                    continue
                given[name] = parsers[name](v) if name in parsers else v
            return fn(*args, given=given, **kwargs)

        required = [p for p in own if p.default is inspect.Parameter.empty]
        rest = [p for p in own if p.default is not inspect.Parameter.empty]
        params = [*required, *made, *rest]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__qualname__, command.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        command.__module__ = fn.__module__
        command.__domains__ = domains  # type: ignore[attr-defined]
        return command

    return decorate
