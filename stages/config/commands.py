"""The command line that makes an entry with given params, every CLI-settable param spelled out.

A hint that says "rerun `drdc train-base --run R`" would train with the preset's defaults, not with the
options the removed or stale entry was made with; the line `command` prints makes the same key again (on the
same inputs), whatever the run's preset. tests/test_hints.py runs it for every entry of a run and checks that.
"""
from __future__ import annotations

import functools
import importlib
import shlex
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from stages.config.registry import STAGES
from stages.config.settings import absent_defaults, flag_name, settings_of


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


def params_class(stage: str) -> Any:
    """The parameters class the registry names for `stage` (torch-free: stages.pipeline.params)."""
    module, name = STAGES[stage].params.split(":")
    return getattr(importlib.import_module(module), name)


def _switch_only(stage: str) -> set[str]:
    """The stage's on/off flags without a --no- form (--bf16)."""
    return {"--" + flag_name(n, s) for n, (_, s) in settings_of(params_class(stage)).items() if s.switch}


def _absent(stage: str) -> dict[str, Any]:
    """Params a key leaves out while they hold the class default (the `added` settings: keys made before the
    option existed stay valid); the preset may set another value, so a command line spells the default out."""
    return absent_defaults(params_class(stage)) if stage in FLAGS else {}


def quote(text: Any) -> str:
    """A path or value as a shell word (unquoted when it needs no quotes)."""
    return shlex.quote(str(text))


def _value(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else shlex.quote(str(v))


def options(stage: str, params: dict) -> dict[str, Any]:
    """{flag: value} of every param of `params` this stage's CLI sets (ABSENT defaults spelled out; None and ()
    left out: they are the stage's "all" or "newest"), in the CLI's order."""
    params = {**_absent(stage), **params}
    return {flag: params[key] for key, flag in FLAGS[stage].items()
            if params.get(key) is not None and not (isinstance(params[key], (list, tuple)) and not params[key])}


def entry_command(entry: Any, merge_c: Iterable[int] | None = None) -> str:
    """The line that makes `entry` again (an extract entry made from a local weight file names that file)."""
    weights = entry.attrs.get("weights_file") if entry.stage == "extract" else None
    return command(entry.stage, entry.store.name, entry.params, merge_c, weights)


def command(stage: str, run: str, params: dict | None = None, merge_c: Iterable[int] | None = None,
            weights: str | None = None) -> str:
    """`drdc <command> --run RUN` with every param of `params` this stage's CLI sets; None: the bare line
    (the preset's defaults). merge_c: infer-diff entries differing only in c, made by one line. weights: the
    local weight file an extract entry was made from."""
    info = STAGES[stage]
    if params is None or stage not in FLAGS:
        extra = f" {info.extra}" if info.extra else ""
        return f"drdc {info.command}{extra} --run {shlex.quote(str(run))}"
    if merge_c is not None:
        params = {**params, "c": sorted(merge_c)}
    parts = [f"drdc {info.command}", f"--run {shlex.quote(str(run))}"]
    switches = _switch_only(stage)
    for flag, v in options(stage, params).items():
        if isinstance(v, bool):
            if flag in switches:
                parts += [flag] if v else []
            else:
                parts.append(flag if v else f"--no-{flag[2:]}")
        else:
            parts.append(f"{flag} {_value(v)}")
    if weights:  # a local weight file: the key holds its hash, the entry's attrs its path
        parts.append(f"--weights {shlex.quote(weights)}")
    return " ".join(parts)


def with_validation(index: Any) -> str:
    """The `drdc index` line that makes index entry `index` again with validation images (normals and
    synthetic defects): its own root, size and categories, so the reruns that follow keep the run's data."""
    q = dict(index.params)
    q["val_fraction"] = q.get("val_fraction") or 0.1
    q["val_min"] = q.get("val_min") or 4
    q["val_defects"] = q.get("val_defects") or 2
    return command("index", index.store.name, q)
