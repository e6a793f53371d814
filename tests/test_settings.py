"""Each setting is declared once, on its Params field (stages.config.settings); the command line's option, its
domain check, the run file's key, `drdc config`'s output and the cache key follow from that declaration.

The main test adds a setting the way a contributor would, touching only the parameters class: a subclass of
ScoreParams with one more field, swapped in before drdc starts (in its own process). Nothing else is edited, and
the new option must reach the help, the option check, the run file, `drdc config`, and leave every existing key as
it was while it holds its default.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import fields

import pytest

from conftest import copy_run
from drdc_cli.domains import domain_table
from drdc_cli.commands import FLAGS
from stages.config.registry import params_class
from stages.config.domains import Int, List, Real
from stages.config.registry import STAGES
from stages.config.settings import flag_name, key_of, settings_of
from stages.errors import ConfigError
from stages.pipeline.params import FuseParams, InferDiffParams, TrainDiffParams

# The contributor's whole change: one field on the stage's parameters class.
PATCH = textwrap.dedent('''
    import json, sys
    from dataclasses import dataclass
    from pathlib import Path

    from stages.config.domains import Int
    from stages.config.settings import setting
    import stages.pipeline.params as P
    import stages.pipeline.params.fusion as F


    @dataclass(frozen=True)
    class ScoreParams(F.ScoreParams):
        smoothing: int = setting(3, Int(1, 9, odd=True), "Smoothing window before the max (a new option).",
                                 added=True)


    F.ScoreParams = P.ScoreParams = ScoreParams
    if sys.argv[1] == "parse-runfile":
        from drdc_cli.app import register_commands
        from drdc_cli.runfile import parse

        register_commands()
        print(json.dumps(parse(Path(sys.argv[2]))[1]))
    else:
        from drdc_cli import main

        sys.argv = ["drdc", *sys.argv[1:]]
        main()
''')


@pytest.fixture(scope="module")
def patched(tmp_path_factory, full_run_pristine):
    folder = tmp_path_factory.mktemp("new_setting")
    script = folder / "drdc_with_smoothing.py"
    script.write_text(PATCH)
    run = copy_run(full_run_pristine, folder / "r.zarr")

    def drdc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}, timeout=300)

    return drdc, run, folder


def test_a_new_setting_reaches_the_cli_its_check_the_run_file_config_and_keys(patched) -> None:
    drdc, run, folder = patched
    # the command line: an option with its help text
    help_text = drdc("score", "--help").stdout
    assert "--smoothing" in help_text and "Smoothing window before the max" in help_text
    # its domain, checked before any work: one line naming the option and the rule, exit 2
    bad = drdc("score", "--run", run, "--smoothing", "4")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --smoothing: must be odd (a centred window) (got 4)"], bad.stderr
    # at its default the key is the one made before the setting existed: the stored score entry is reused
    entries = lambda: sorted(p.name for p in (run / "score").iterdir() if p.is_dir())  # noqa: E731
    before = entries()
    same = drdc("score", "--run", run, "--source", "base")
    assert same.returncode == 0 and "cached" in same.stdout, same.stdout + same.stderr
    assert entries() == before
    # another value is a new entry, and `drdc config` writes it into the run file's [score] table
    new = drdc("score", "--run", run, "--source", "base", "--smoothing", "5")
    assert new.returncode == 0 and "cached" not in new.stdout and len(entries()) == len(before) + 1, new.stderr
    config = drdc("config", "--run", run).stdout
    assert "[score]" in config and "smoothing = 5" in config.split("[score]")[1], config
    # the run file: the key is the flag without dashes, checked against the same domain, parsed into the value
    (folder / "bad.toml").write_text(f'[run]\nstore = "{run}"\n[score]\npool = 8\nsmoothing = 4\n')
    res = drdc("parse-runfile", folder / "bad.toml")
    assert res.returncode != 0 and "bad.toml:5: [score] smoothing: must be odd" in res.stderr, res.stderr
    (folder / "good.toml").write_text(f'[run]\nstore = "{run}"\n[score]\npool = 8\nsmoothing = 5\n')
    res = drdc("parse-runfile", folder / "good.toml")
    assert res.returncode == 0 and json.loads(res.stdout) == [["score", {"pool": 8, "smoothing": 5}]], res.stderr


@pytest.mark.parametrize("stage", [s for s, info in STAGES.items() if info.params])
def test_every_setting_has_one_flag_one_domain_and_is_checked_by_its_params(stage: str) -> None:
    """Each setting's flag is the one every command line, run file and hint spells (FLAGS), and its domain is
    enforced by the parameters themselves: each end of a numeric domain is taken, one step outside refused."""
    cls = params_class(stage)
    assert FLAGS[stage] == {n: "--" + flag_name(n, s) for n, (_, s) in settings_of(cls).items()}
    made = {"root": "x"} if stage == "index" else {}
    for name, (f, s) in settings_of(cls).items():
        dom = s.domain
        if isinstance(dom, (Int, Real)) and not isinstance(f.default, bool) and name not in ("seed", "val_seed"):
            for inside, outside in ((dom.lo, dom.lo - 1), (dom.hi, dom.hi + 1)):
                if isinstance(dom, Real) and ((inside == dom.lo and dom.lo_open) or (inside == dom.hi and dom.hi_open)):
                    continue
                if isinstance(dom, Int) and dom.odd and inside % 2 == 0:
                    inside -= 1
                try:
                    cls(**made, **{name: (float if isinstance(dom, Real) else int)(inside)})
                except ConfigError as e:  # a rule that joins two settings may refuse an extreme (hidden_dim 1 ...)
                    assert not any(r in str(e) for r in ("must be in", "must be odd")), f"{stage}.{name}={inside}: {e}"
                with pytest.raises(ConfigError, match=f"^{name}: must"):
                    cls(**made, **{name: (float if isinstance(dom, Real) else int)(outside)})


def test_a_preset_overrides_declared_settings_only() -> None:
    """A preset is a set of overrides of the stages' settings: every key is a setting of that stage, and every
    value lies in the setting's domain (the Params check it when built)."""
    from stages.config.presets import PRESETS, build

    for preset, stages in PRESETS.items():
        for stage, values in stages.items():
            cls = params_class(stage)
            assert set(values) <= set(settings_of(cls)), f"{preset} {stage}: {set(values) - set(settings_of(cls))}"
            build(cls, stage, preset, **({"root": "x"} if stage == "index" else {}))


def test_the_commands_check_a_setting_with_its_declared_domain() -> None:
    """The option check of every command made from a Params class uses the field's own domain object."""
    from drdc_cli.app import register_commands
    import typer
    from drdc_cli.app import app

    register_commands()
    commands = typer.main.get_command(app).commands
    from stages.apps.choices import BoundParams
    from stages.data.choices import SyntheticSpec

    made = (("fuse", FuseParams, ()), ("infer-diff", InferDiffParams, ()), ("train-diff", TrainDiffParams, ()),
            ("bound", BoundParams, ()), ("make-data", SyntheticSpec, ("categories",)),
            ("demo", SyntheticSpec, ("categories", "seed")))
    for command, cls, left_out in made:
        table = domain_table(commands[command].callback)
        for name, (_, s) in settings_of(cls).items():
            if s.domain is not None and s.option and name not in left_out:
                assert table["--" + flag_name(name, s)] is s.domain, (command, name)


def test_added_settings_keep_the_keys_of_older_stores() -> None:
    """A setting marked `added` is left out of the key at its default, and enters it otherwise."""
    base = key_of(InferDiffParams())
    assert "init" not in base and "distance" not in base and "bf16" not in base
    assert key_of(InferDiffParams(init="ddad"))["init"] == "ddad"
    assert InferDiffParams(bf16=True).entry_params(4, 64)["precision"] == "bf16"
    assert set(TrainDiffParams().key_params()) == {f.name for f in fields(TrainDiffParams)} - {
        "task", "crop", "diffusion_steps", "beta_start", "beta_end", "chain"}


def test_list_settings_check_tuples_and_option_text_alike() -> None:
    dom = settings_of(FuseParams)["t"][1].domain
    assert isinstance(dom, List)
    dom.check("t", (250, 200))
    dom.check("--t", "250,200")
    for bad in ((250, 250), "250,,200"):
        with pytest.raises(ConfigError):
            dom.check("t", bad)
