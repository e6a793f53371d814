"""Each setting declared once, on its parameters dataclass: default, domain, help text, flag spelling, help panel.

    gamma: float = setting(GAMMA, Real(0.0, 1.0), "Weight of the diffusion heatmap (Eq 19); 0: base only.")

From that one declaration come the command line's option (drdc_cli.generate: its type, flag, help and panel), the
option's domain check (before any work), the Params' own check (`check_settings` in __post_init__, so a run
file, a preset or a library caller is held to the same domain), the run file's key (the flag without dashes),
`drdc config`'s output and the rerun lines of hints (drdc_cli.commands reads the flags from here), and
whether the value enters the cache key while at its default (`added`, `key_of`). A preset (stages.config.presets) is a
set of overrides of these defaults, nothing more. Fields without a setting are not the user's to set (a model's
fixed constants, the dataset root a command names by its own option).

Plain Python: the command line builds its options from these at parse time, without torch.
"""
from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from stages.config.domains import Choice, Int, List, Real, Text
from stages.config.settle import keyed

Domain = Int | Real | Choice | List | Text
PANELS = ("model", "training", "validation", "fusion")  # the help panels a setting may sit in (None: the main one)


@dataclass(frozen=True)
class Setting:
    domain: Domain | None  # None: a bool (an on/off switch)
    help: str = ""  # `{name}`, `{stage.name}`: another setting, which the command line shows as its flag
    flag: str = ""  # its spelling without dashes, where it differs from the field's name (n_s: "ns")
    panel: str | None = None  # one of PANELS
    switch: bool = False  # a bool switched on by its flag alone, with no --no- form (--bf16)
    option: bool = True  # False: the command spells it by an option of its own (index's root is --data)
    added: bool = False  # added after stores existed: left out of the key while it holds its default (old keys stay)


def setting(default: Any, domain: Domain | None = None, help: str = "", **how: Any) -> Any:  # noqa: A002
    """A dataclass field with its Setting (see the module docstring)."""
    if how.get("panel") is not None and how["panel"] not in PANELS:
        raise ValueError(f"panel {how['panel']!r} is not one of {PANELS}")
    return field(default=default, metadata={"setting": Setting(domain, help, **how)})


def settings_of(cls: Any) -> dict[str, tuple[Field, Setting]]:
    """{field name: (field, its Setting)} of every setting of a Params class (or instance), in field order."""
    return {f.name: (f, f.metadata["setting"]) for f in fields(cls) if "setting" in f.metadata}


def flag_name(name: str, s: Setting) -> str:
    """The setting's name on the command line and in a run file, without dashes: n_s -> ns, eval_size -> eval-size."""
    return s.flag or name.replace("_", "-")


def default_of(f: Field) -> Any:
    return None if f.default is MISSING else f.default


def check_settings(params: Any) -> None:
    """Each setting's value in its domain; raises a ConfigError naming the field. None, and an empty list whose
    default is empty, mean "not set" (every cached t, every category ...). For a Params' __post_init__, after
    settle_fields."""
    for name, (f, s) in settings_of(params).items():
        v = getattr(params, name)
        if v is None or (v == () and f.default == ()):
            continue
        if s.domain is not None:
            s.domain.check(name, v)


def key_of(params: Any) -> dict:
    """The params that key a stage's entry (JSON-able): every field, less each `added` setting that holds its
    default, so a store made before the setting existed keeps its keys."""
    d = keyed(params)
    for name, (f, s) in settings_of(params).items():
        if s.added and getattr(params, name) == f.default:
            d.pop(name)
    return d


def absent_defaults(cls: Any) -> dict[str, Any]:
    """{field: default} of the `added` settings: what a key that lacks them was made with."""
    return {n: list(d) if isinstance(d := default_of(f), tuple) else d
            for n, (f, s) in settings_of(cls).items() if s.added}
