"""The command line of a Step: the one place that spells a stage's fix as `drdc <command> --run R --flag value`.

The library names fixes as data (stages.errors.Step: stage, run, parameters); this module renders them, with the
flags read from the settings' declarations (stages.config.settings). A hint that said "rerun `drdc train-base --run
R`" would train with the preset's defaults, not with the options the removed or stale entry was made with; a
whole Step's line spells every setting out, so it makes the same key again (on the same inputs), whatever the run's
preset. tests/test_hints.py runs it for every entry of a run and checks that.
"""
from __future__ import annotations

import functools
import shlex
from collections.abc import Iterator, Mapping
from typing import Any

from stages.config.registry import STAGES, params_class
from stages.config.settings import absent_defaults, flag_name, settings_of
from stages.errors import Message, Option, Step, render

# the command of each stage and job a Step names, where it is not the name with dashes
COMMAND = {"cache_gc": "cache gc", "cache_verify": "cache verify"}
# what a bare line (the stage's defaults) must still give: index needs its dataset
REQUIRED = {"index": "--data ROOT"}


def command_name(stage: str) -> str:
    """The CLI command of a stage or job: train_base -> train-base, cache_gc -> cache gc."""
    return COMMAND.get(stage, stage.replace("_", "-"))


class _Flags(Mapping[str, dict[str, str]]):
    """stage -> {param: its flag}, read from the stage's Params settings (stages.config.settings: `n_s` is
    --ns, `root` is --data) on first use, so a new setting is spelled in every command line without an edit here."""

    @functools.cached_property
    def _table(self) -> dict[str, dict[str, str]]:
        return {stage: {name: "--" + flag_name(name, s) for name, (_, s) in settings_of(params_class(stage)).items()}
                for stage, info in STAGES.items() if info.params}

    def __getitem__(self, stage: str) -> dict[str, str]:
        return self._table[stage]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


FLAGS = _Flags()


def _switch_only(stage: str) -> set[str]:
    """The stage's on/off flags without a --no- form (--bf16)."""
    return {"--" + flag_name(n, s) for n, (_, s) in settings_of(params_class(stage)).items() if s.switch}


def quote(text: Any) -> str:
    """A path or value as a shell word (unquoted when it needs no quotes)."""
    return shlex.quote(str(text))


def _value(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else shlex.quote(str(v))


def _is_set(v: Any) -> bool:
    """None and () are a stage's "all" or "newest": no option spells them."""
    return v is not None and not (isinstance(v, (list, tuple)) and not v)


def options(stage: str, params: dict) -> dict[str, Any]:
    """{flag: value} of every param of `params` this stage's CLI sets, in the CLI's order. The `added` settings a
    key leaves out at their class defaults are spelled out (the run's preset may choose other values)."""
    params = {**absent_defaults(params_class(stage)), **params}
    return {flag: params[key] for key, flag in FLAGS[stage].items() if _is_set(params.get(key))}


def _flag(stage: str, name: str) -> str:
    """The flag of a parameter of `stage` (its settings' spelling, else the name with dashes)."""
    from .flags import flag

    return FLAGS[stage].get(name, flag(name)) if stage in FLAGS else flag(name)


def _words(stage: str, flags: dict[str, Any]) -> list[str]:
    switches = _switch_only(stage) if stage in FLAGS else set()
    out: list[str] = []
    for flag, v in flags.items():
        if isinstance(v, bool):
            if flag in switches:
                out += [flag] if v else []
            else:
                out.append(flag if v else f"--no-{flag[2:]}")
        else:
            out.append(f"{flag} {_value(v)}")
    return out


def line(step: Step) -> str:
    """`drdc <command> --run RUN` with the step's parameters as this command's flags (a whole step: every setting
    of the stage spelled out, the added ones at their defaults too); no parameters: the bare line (the preset's
    defaults, with what the command requires: index's --data ROOT)."""
    stage = step.stage
    parts = [f"drdc {command_name(stage)}"]
    if step.params is None and stage in REQUIRED:
        parts.append(REQUIRED[stage])
    if step.run is not None:
        parts.append(f"--run {quote(step.run)}")
    params = dict(step.params or {})
    if step.merge_c is not None:
        params["c"] = sorted(step.merge_c)
    if step.params is not None and step.whole and stage in FLAGS:
        flags = options(stage, params)
    else:
        flags = {_flag(stage, k): v for k, v in params.items() if _is_set(v)}
    parts += _words(stage, flags)
    if step.weights:  # a local weight file: the key holds its hash, the entry's attrs its path
        parts.append(f"--weights {quote(step.weights)}")
    return " ".join(parts)


def shown(step: Step) -> str:
    """A step as a line of a list of commands: the line, then what it does."""
    return line(step) + (f"   ({step.note})" if step.note else "")


def option(o: Option) -> str:
    """`--flag`, `index --layout` (another stage's option), `--gamma 0` (with a value)."""
    text = _flag(o.stage or "", o.name)
    if o.stage:
        text = f"{command_name(o.stage)} {text}"
    if not o.has_value:
        return text
    if isinstance(o.value, bool):  # a switch: --model-condition, --no-model-condition
        return text if o.value else text.replace("--", "--no-", 1)
    return f"{text} {_value(o.value)}"


def text(message: Message) -> str:
    """A library message as the command line says it: its steps as quoted `drdc ...` lines, its options as flags."""
    return render(message, line, option)


def entry_line(entry: Any) -> str:
    """The line that makes `entry` again (stages.store.cache.Entry.step)."""
    return line(entry.step())
