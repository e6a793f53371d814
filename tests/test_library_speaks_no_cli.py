"""The library speaks no command line (README, "Architecture"): no text of stages/ spells a flag or a `drdc ...`
line. A fix is a Step (stage, run, parameters) and a named setting an Option (stages.errors); drdc_cli alone
renders them (drdc_cli.commands), so every hint and every error line comes from the settings' declarations.

Checked on the source: every string literal of every library module, docstrings and comments aside (they may
say how a user reaches a function), is free of flags and command lines."""
from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from drdc_cli.commands import line, option, shown, text
from drdc_cli.flags import message
from stages.errors import CacheMissError, ConfigError, Option, Step, check, render

STAGES_DIR = Path(__file__).resolve().parents[1] / "stages"
# the exported folder's own program (numpy + onnxruntime, argparse) and the check that runs it: that program's
# command line, which ships without drdc
OWN_PROGRAM = {"apps/export/infer.py", "apps/export/check.py"}
COMMAND_LINE = re.compile(r"`drdc\b|\bdrdc [a-z][a-z-]* (--|[a-z-]+ --)|(?<![\w-])--[a-z][a-z0-9-]*")
MODULES = sorted(p for p in STAGES_DIR.rglob("*.py") if str(p.relative_to(STAGES_DIR)) not in OWN_PROGRAM)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal of a module but its docstrings (an f-string's literal parts)."""
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree)
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(STAGES_DIR)))
def test_no_library_text_spells_a_flag_or_a_command_line(path: Path) -> None:
    found = [f"{path.relative_to(STAGES_DIR)}:{n}: {t!r}" for n, t in texts(path) if COMMAND_LINE.search(t)]
    assert not found, "the library names settings and steps as data (stages.errors.Option, Step):\n" + "\n".join(found)


def test_the_pattern_finds_what_it_must() -> None:
    """The check above can fail: each way a command line was written in the library before is caught."""
    for bad in ("rerun `drdc extract --run r`", "pass --overwrite to replace it", "(index --layout)",
                "drdc cache verify --run r --repair", "--variant abc: no entry", "then `drdc ablate` again"):
        assert COMMAND_LINE.search(bad), bad
    for fine in ("not a drdc run store", "written by a newer drdc (schema 2)", "a drdc option", "x -- y",
                 "train/good", "infer-diff 0f47a69 in r.zarr is damaged", "e.g. 1,16,32"):
        assert not COMMAND_LINE.search(fine), fine


def test_a_step_is_data_the_library_shows_as_python_and_the_cli_as_a_command_line() -> None:
    step = Step("infer_diff", "runs/a b.zarr", {"t": [250, 200], "c": [16], "test_time_condition": False},
                whole=False)
    e = CacheMissError("no cached maps; make them with ", step)
    assert e.steps == [step]
    assert str(e) == ("no cached maps; make them with `infer_diff(run='runs/a b.zarr', t=[250, 200], c=[16], "
                      "test_time_condition=False)`")
    said = message(e)
    cmd = re.search(r"`([^`]+)`", said)[1]
    assert shlex.split(cmd) == ["drdc", "infer-diff", "--run", "runs/a b.zarr", "--t", "250,200", "--c", "16",
                                "--no-test-time-condition"]
    assert said == f"no cached maps; make them with `{line(step)}`"


def test_a_whole_step_spells_every_setting_so_it_makes_the_same_key() -> None:
    """An entry's params, rendered whole: the settings `added` after the entry was made are spelled out at their
    defaults (the run's preset may choose others), the flags from the declarations (n_s is --ns)."""
    words = shlex.split(line(Step("infer_diff", "r.zarr", {"t": [250], "c": [16], "l": [1], "n_s": 2})))
    assert words[:3] == ["drdc", "infer-diff", "--run"] and "--ns" in words and "--init" in words
    assert "--init" not in line(Step("infer_diff", "r.zarr", {"n_s": 2}, whole=False))


def test_bare_steps_and_other_jobs() -> None:
    assert line(Step("index", "r.zarr")) == "drdc index --data ROOT --run r.zarr"  # what index cannot do without
    assert line(Step("fuse")) == "drdc fuse"
    assert line(Step("cache_gc", "r.zarr", {"key": "0f47"}, whole=False)) == "drdc cache gc --run r.zarr --key 0f47"
    assert shown(Step("ablate", "r.zarr", note="again")) == "drdc ablate --run r.zarr   (again)"
    assert line(Step("calibrate", "r.zarr", {"base_only": True, "weights": "w.pt"}, whole=False)) == \
        "drdc calibrate --run r.zarr --base-only --weights w.pt"


@pytest.mark.parametrize("opt, cli, plain", [
    (Option("overwrite"), "--overwrite", "overwrite"),
    (Option("n_s"), "--ns", "n_s"),
    (Option("layout", "index"), "index --layout", "index layout"),
    (Option("grid", "train_diff", (1, 16)), "train-diff --grid 1,16", "train_diff grid (1, 16)"),
    (Option("gamma", value=0), "--gamma 0", "gamma 0"),
    (Option("model_condition", value=False), "--no-model-condition", "model_condition False"),
])
def test_an_option_is_its_flag_on_the_command_line_and_its_name_in_the_library(opt, cli, plain) -> None:
    assert option(opt) == cli and str(opt) == plain and render(("x ", opt)) == f"x {plain}"
    assert text(("x ", opt)) == f"x {cli}"


def test_a_config_error_names_its_parameter_and_keeps_its_parts() -> None:
    with pytest.raises(ConfigError) as info:
        check(False, "c", ("must be a grid size the UNet was trained on (", Option("grid", "train_diff", (1, 16)),
                           ")"), 8)
    e = info.value
    assert str(e) == "c: must be a grid size the UNet was trained on (train_diff grid (1, 16)) (got 8)"
    assert message(e) == "--c: must be a grid size the UNet was trained on (train-diff --grid 1,16) (got 8)"
    assert message(e, dashes=False).startswith("c: must be")
