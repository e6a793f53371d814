"""Every hint is a command that does what it says: the test runs it.

Each case puts a run into a state a user meets (no store, maps not cached, a stale or incomplete result, a
damaged checkpoint, an uncalibrated run, a bad --key), runs the command that fails, takes the commands the error
line quotes in `backticks`, runs them (following their own hints in turn) and checks that the first command
then does its job. And `drdc_cli.commands.line`, the line every "rerun" hint prints (a Step the library names), makes the very entry it
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
from drdc_cli.commands import entry_line as entry_command

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
    assert line.startswith("drdc calibrate") and "--base-only" in line, line  # predict's own options
    cli(*shlex.split(line)[1:], "-q")
    assert "uncalibrated" not in cli("predict", image, "--run", run, "--base-only").stderr


def test_ablate_rows_are_filled_by_their_commands(run, tmp_path, cli):
    out = tmp_path / "a.json"
    cli("ablate", "--run", run, "--c", "1,8", "--json", out, "-q")
    rows = {r["variant"]: r for r in json.loads(out.read_text())}
    name = "+ start ddad (no retraining)"
    assert rows[name]["commands"] and not rows[name]["metrics"], rows[name]
    for line in rows[name]["commands"]:
        cli(*shlex.split(line)[1:], "-q")
    cli("ablate", "--run", run, "--c", "1,8", "--json", out, "-q", "--overwrite")
    rows = {r["variant"]: r for r in json.loads(out.read_text())}
    assert rows[name]["metrics"] and not rows[name]["commands"], rows[name]


# -- the generated walk -----------------------------------------------------------------------------------------
# Every error (or note) that quotes a command, for the option values that reach it: each command that selects
# cached maps, walked over values of each of its options drawn from the option's own domain (its setting's or
# drdc_cli/domains.py's),
# on the tiny run and on the tiny run with one stage's current result removed. Every command a message quotes is
# then run and must be accepted: it may start work (stopped at once, as tests/test_option_domains.py stops it) or
# end, but not be refused by its option domains or parameter checks (exit 2), nor fail with a traceback.
# DRDC_HINT_CASES: how many cases to sample (default 60; `all`), DRDC_HINT_SEED: which.
import os  # noqa: E402
import random  # noqa: E402

from drdc_cli.domains import Choice, Int, List, Real, domain_table, flags  # noqa: E402


class WorkStarted(Exception):
    """A command got past every check and began to work."""


def _domain_values(flag: str, dom) -> list[str]:
    """Values inside an option's domain, from both ends and the small numbers a user types."""
    if isinstance(dom, Int):
        vs = sorted({dom.lo, dom.lo + 1, 2, 3, 4, 5, 7, 8, 16, 17, 32, 64, 256, dom.hi})
        return [str(v) for v in vs if dom.lo <= v <= dom.hi and (not dom.odd or v % 2) and v % dom.multiple_of == 0]
    if isinstance(dom, List) and isinstance(dom.item, Int):
        return _domain_values(flag, dom.item)[:9] + ["1,8", "8,1"]
    if isinstance(dom, Choice):
        return list(dom.values)
    if isinstance(dom, Real):
        return [str(v) for v in (dom.lo, 0.5, dom.hi) if not (v == dom.lo and dom.lo_open) and not (
            v == dom.hi and dom.hi_open)]
    return []


def _walk_cases() -> list[tuple[str, tuple[str, ...], list[str]]]:
    """(situation, command path, extra arguments) of the walk."""
    from test_option_domains import COMMANDS

    selecting = sorted(p for p, cmd in COMMANDS.items() if "--c" in {f for f, _ in flags(cmd.callback).values()})
    cases = []
    for path in selecting:
        table = domain_table(COMMANDS[path].callback)
        for name, (flag, is_bool) in flags(COMMANDS[path].callback).items():
            if flag in ("--run", "--device", "--weights", "--out", "--csv", "--json", "--category", "IMAGES",
                        "--quiet", "--worst", "--check"):
                continue
            if is_bool:
                opt = next(o for o in COMMANDS[path].params if o.name == name)
                cases += [("pristine", path, [o]) for o in (*opt.opts, *opt.secondary_opts) if o.startswith("--")]
                continue
            cases += [("pristine", path, [flag, v]) for v in _domain_values(flag, table.get(flag))]
    for stage in ("index", "extract", "train_base", "infer_base", "train_diff", "infer_diff", "fuse", "score"):
        cases += [(f"without {stage}", path, []) for path in selecting]
    return cases


WALK = _walk_cases()


@pytest.fixture()
def no_work(monkeypatch):
    import stages.apps.predict.loop

    def refuse(*a, **k):
        raise WorkStarted()

    monkeypatch.setattr(RunStore, "begin", refuse)
    monkeypatch.setattr(stages.apps.predict.loop, "predict", refuse)


def _accepted(res) -> bool:
    return isinstance(res.exception, WorkStarted) or (
        res.exit_code in (0, 1) and "Traceback" not in res.output
        and (res.exception is None or isinstance(res.exception, SystemExit)))


def test_every_quoted_command_is_accepted_for_every_value_that_reaches_it(full_run_pristine, tiny_data, tmp_path,
                                                                         cli, no_work):
    image = sorted((tiny_data / "disc" / "test").rglob("*.png"))[0]
    n = os.environ.get("DRDC_HINT_CASES", "60")
    cases = WALK if n == "all" else random.Random(int(os.environ.get("DRDC_HINT_SEED", "0"))).sample(
        WALK, min(int(n), len(WALK)))
    assert len(WALK) > 300
    pristine = copy_run(full_run_pristine, tmp_path / "pristine.zarr")
    checked: dict[str, bool] = {}
    bad, quoting = [], 0
    for situation, path, extra in cases:
        run = pristine
        if situation != "pristine":
            run = copy_run(full_run_pristine, tmp_path / f"s{len(checked)}-{random.random():.6f}.zarr")
            stage = situation.split()[1]
            shutil.rmtree(RunStore(run).current(stage).path)
        base = {"predict": [image]}.get(path[0], [])
        args = [*path, *base, "--run", run, *extra]
        res = cli(*args, code=None)
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith(("error:", "note:"))]
        hints = [h for ln in lines for h in QUOTED.findall(ln)]
        quoting += bool(hints)
        for h in hints:
            if h in checked:
                continue
            words = [str(tiny_data) if w == "ROOT" else str(image) if w == "IMAGE..." else w for w in shlex.split(h)]
            checked[h] = _accepted(got := cli(*words[1:], code=None))
            if not checked[h]:
                bad.append(f"{' '.join(map(str, args))}\n  quotes `{h}`\n  refused: {got.stderr.strip()[-300:]}")
    assert quoting >= len(cases) // 4, f"only {quoting} of {len(cases)} cases quote a command"
    assert not bad, f"{len(bad)} of {len(checked)} quoted commands refused:\n" + "\n".join(bad)
