"""Every hint is a command that does what it says: the test runs it.

Each case puts a run into a state a user meets (no store, maps not cached, a stale or incomplete result, a
damaged checkpoint, an uncalibrated run, a bad --key), runs the command that fails, takes the commands the error
line quotes in `backticks`, runs them (following their own hints in turn) and checks that the first command
then does its job. And `stages.store.commands.command`, the line every "rerun" hint prints, makes the very entry it
names again: on every entry of a run it answers "cached" with the same key.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from stages.store.cache import RunStore
from stages.store.commands import entry_command

from conftest import (TINY_DIFF, TINY_EXTRACT, TINY_INDEX, TINY_INFER, TINY_TRAIN, copy_run, options)

QUOTED = re.compile(r"`(drdc [^`]+)`")


def _run(cli, line: str, subs: dict[str, str]):
    args = [subs.get(a, a) for a in shlex.split(line)[1:]]
    return cli(*args, code=None)


def follow(cli, args: list, subs: dict[str, str], done=lambda res: res.exit_code == 0, depth: int = 0) -> list[str]:
    """Run args; while they are not done, run the commands the output quotes (each followed the same way) and
    try again. Returns every hint that was run; fails when a hint fails or leads nowhere."""
    args = [subs.get(str(a), a) for a in args]  # placeholders a hint leaves to the user: ROOT, ...
    ran: list[str] = []
    seen: set[tuple[str, ...]] = set()
    for _ in range(10):
        res = cli(*args, code=None)
        if done(res):
            return ran
        assert "Traceback" not in res.output, res.output
        said = [ln for ln in res.stderr.splitlines() if ln.startswith(("error:", "note:"))]
        hints = tuple(h for ln in said for h in QUOTED.findall(ln))
        assert hints, f"{args}: not done and no command to run:\n{res.output}"
        assert hints not in seen, f"{args}: the same hints again after running them: {hints}"
        seen.add(hints)
        for line in hints:
            assert depth < 4, f"hints nest too deep at {line}"
            ran += [line, *follow(cli, shlex.split(line)[1:], subs, depth=depth + 1)]
    raise AssertionError(f"{args}: not done after 10 rounds of hints: {ran}")


@pytest.fixture()
def run(full_run_pristine, tmp_path) -> Path:
    return copy_run(full_run_pristine, tmp_path / "r.zarr")


def test_every_entry_is_remade_by_its_own_command(run, tiny_data, cli):
    """The line a rerun hint prints for an entry reproduces its key, whatever the preset would choose."""
    store = RunStore(run)
    for e in store.entries():
        line = entry_command(e)
        res = cli(*shlex.split(line)[1:], code=0)
        assert "cached" in res.output and e.key in res.output, f"{line}\n{res.output}"


def _gc(run: Path, stage: str) -> None:
    shutil.rmtree(RunStore(run).current(stage).path)


def _retrain_base_other_seed(run: Path, cli) -> None:
    cli("train-base", "--run", run, *TINY_TRAIN, "--seed", "1", "-q")  # infer-base, fuse, score: now stale


def _other_config_checkpoint(run: Path, cli) -> None:
    from stages.models.reconstruction import ReconstructionConfig, UniADReconstruction

    store = RunStore(run)
    other = UniADReconstruction(ReconstructionConfig(in_channels=16, feature_size=8, hidden_dim=16, nhead=2,
                                                     dim_feedforward=32, num_encoder_layers=1, num_decoder_layers=1,
                                                     neighbor_size=3))
    torch.save(other.state_dict(), store.current("train_base").files / "model.pt")
    _gc(run, "infer_base")


def _incomplete(run: Path, stage: str) -> None:
    e = RunStore(run).current(stage)
    e.update(status="running")  # as a killed run leaves it


def _without_validation(run: Path, cli, data: Path) -> None:
    """The tiny run again, every stage, on an index with no validation images."""
    shutil.rmtree(run)
    for args in (["index", "--data", data, *options(TINY_INDEX, "--val-min", "0"), "--val-fraction", "0"],
                 ["extract", *TINY_EXTRACT], ["train-base", *TINY_TRAIN], ["infer-base"], ["train-diff", *TINY_DIFF],
                 ["infer-diff", *TINY_INFER, "--c", "1,8"]):
        cli(args[0], "--run", run, *args[1:], "-q")


CASES = {  # name: (set-up, the failing command line after `drdc`)
    "no store yet": (None, ["cache", "ls", "--run", "NEW"]),
    "maps of a t not cached": (None, ["fuse", "--run", "RUN", "--t", "77"]),
    "maps of a c not cached": (None, ["fuse", "--run", "RUN", "--c", "4"]),
    "feature maps not cached": (None, ["fuse", "--run", "RUN", "--distance", "feature", "--l", "1"]),
    "a result removed": (lambda r, cli: _gc(r, "infer_base"), ["score", "--run", "RUN", "--source", "base"]),
    "stale after retraining": (_retrain_base_other_seed, ["score", "--run", "RUN", "--source", "fuse"]),
    "an incomplete result": (lambda r, cli: _incomplete(r, "infer_base"), ["fuse", "--run", "RUN", "--c", "1,8"]),
    "a checkpoint of another model": (_other_config_checkpoint, ["infer-base", "--run", "RUN"]),
    "no validation images": (_without_validation, ["fuse", "--run", "RUN", "--c", "1,8", "--norm", "pixel"]),
    "test scores missing": (lambda r, cli: [_gc(r, "score")],
                            ["calibrate", "--run", "RUN", "--on-test-labels"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hint_leads_to_the_result(case, run, tiny_data, tmp_path, cli):
    setup, args = CASES[case]
    if setup is _without_validation:
        setup(run, cli, tiny_data)
    elif setup:
        setup(run, cli)
    subs = {"RUN": str(run), "NEW": str(tmp_path / "new.zarr"), "ROOT": str(tiny_data)}
    args = [subs.get(a, a) for a in args]
    ran = follow(cli, args, subs)
    assert ran, "the command needed no hint: the case sets up nothing"


def test_see_hints_run(run, cli):
    """A hint that points at another command ('see ...') names one that works."""
    res = cli("cache", "gc", "--run", run, "--key", "zzz", code=2)
    (line,) = QUOTED.findall(res.stderr)
    assert _run(cli, line, {}).exit_code == 0, line


def test_the_uncalibrated_note_names_the_command_that_calibrates(run, tiny_data, cli):
    image = sorted((tiny_data / "disc" / "test").rglob("*.png"))[0]
    res = cli("predict", image, "--run", run, "--base-only")
    (line,) = QUOTED.findall(res.stderr)
    assert line.startswith("drdc calibrate"), line
    cli(*shlex.split(line)[1:], "--base-only", "-q")  # "with the same fusion options": --base-only here
    assert "uncalibrated" not in cli("predict", image, "--run", run, "--base-only").stderr


def test_ablate_rows_are_filled_by_their_commands(run, tmp_path, cli):
    out = tmp_path / "a.json"
    cli("ablate", "--run", run, "--c", "1,8", "--json", out, "-q")
    rows = {r["variant"]: r for r in json.loads(out.read_text())}
    name = "+ start ddad (no retraining)"
    assert rows[name]["commands"] and not rows[name]["metrics"], rows[name]
    for line in rows[name]["commands"]:
        cli(*shlex.split(line)[1:], "-q")
    cli("ablate", "--run", run, "--c", "1,8", "--json", out, "-q")
    rows = {r["variant"]: r for r in json.loads(out.read_text())}
    assert rows[name]["metrics"] and not rows[name]["commands"], rows[name]
