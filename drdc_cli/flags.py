"""The one place where a library parameter name becomes the command-line flag a user typed.

The library names parameters (`n_s`, `grid`, Params fields: stages.errors); drdc_cli.commands.FLAGS (read from
the settings' declarations, stages.config.settings) maps each stage's params to its flags, and every other
parameter is its flag with dashes (`eval_size` -> `--eval-size`). An error's message renders here: the steps it
names as `drdc ...` lines, the options as flags (drdc_cli.commands.text).
"""
from __future__ import annotations

from functools import lru_cache

from stages.errors import ConfigError, DrdcError


@lru_cache(maxsize=1)
def _table() -> dict[str, str]:
    from .commands import FLAGS

    return {param: flag for stage in FLAGS.values() for param, flag in stage.items()}


def flag(param: str) -> str:
    """The flag of one parameter, e.g. n_s -> --ns, dim_feedforward -> --ffn-dim, eval_size -> --eval-size (a name
    that is already a flag or an argument, --gamma or IMAGES, stays as it is)."""
    if param.startswith("-") or param.isupper():
        return param
    return _table().get(param, "--" + param.replace("_", "-"))


def message(e: DrdcError, dashes: bool = True) -> str:
    """The error's one line as the command line says it: a ConfigError's parameters as flags ("fpr/percentile" ->
    "--fpr/--percentile"); dashes=False: as a run file's keys ("fpr/percentile" -> "fpr/percentile")."""
    from stages.errors import render

    from .commands import line, option

    def said(parts) -> str:  # a run file's keys are the flags without dashes
        return render(parts, line, option if dashes else lambda o: option(o).replace("--", ""))

    if isinstance(e, ConfigError) and e.param:
        names = (flag(p) if dashes else flag(p).removeprefix("--") for p in e.param.split("/"))
        return f"{'/'.join(names)}: {said(e.detail_parts)}"
    return said(e.parts)
