"""Library errors name parameters; the CLI says them as the flags a user typed (drdc_cli.flags, one table)."""
from __future__ import annotations

import pytest

from drdc_cli.flags import flag, message
from stages.errors import ConfigError, DataError, check
from stages.method.masks import check_grid
from stages.pipeline.train_diff import TrainDiffParams
from drdc_cli.commands import FLAGS


def test_every_stage_param_has_one_flag() -> None:
    seen: dict[str, str] = {}
    for stage in FLAGS.values():
        for param, f in stage.items():
            assert seen.setdefault(param, f) == f, f"{param} is {seen[param]} in one stage and {f} in another"
            assert flag(param) == f


@pytest.mark.parametrize("param, want", [("n_s", "--ns"), ("dim_feedforward", "--ffn-dim"), ("eval_size", "--eval-size"),
                                         ("root", "--data"), ("grid", "--grid")])
def test_flag_of_a_parameter(param: str, want: str) -> None:
    assert flag(param) == want


def test_message_says_flags_and_leaves_other_errors_alone() -> None:
    with pytest.raises(ConfigError) as info:
        check(False, "n_s", "must be >= 2", 1)
    assert str(info.value) == "n_s: must be >= 2 (got 1)" and message(info.value) == "--ns: must be >= 2 (got 1)"
    assert message(ConfigError("give one of them", "fpr/percentile")) == "--fpr/--percentile: give one of them"
    assert message(ConfigError("x", "hidden_dim/nhead"), dashes=False) == "hidden-dim/heads: x"  # run-file keys
    assert message(ConfigError("no parameter here")) == "no parameter here"
    assert message(DataError("x.png: unreadable")) == "x.png: unreadable"


def test_the_same_rule_names_each_callers_parameter() -> None:
    """check_grid is infer-diff's rule for c and train-diff's for its grid sizes: no string rewriting."""
    with pytest.raises(ConfigError, match="^c: 3 does not divide"):
        check_grid(64, 3, 2)
    with pytest.raises(ConfigError, match="^grid: 3 does not divide") as info:
        TrainDiffParams(size=64, channel_mult=(1, 2), grid=(1, 3))
    assert message(info.value).startswith("--grid: 3 does not divide the image size 64")


def test_cli_prints_the_flag(full_run_pristine, cli) -> None:
    res = cli("train-diff", "--run", full_run_pristine, "--size", "32", "--channel-mult", "1,2", "--grid", "3",
              code=2)
    assert "--grid: 3 does not divide the image size 32" in res.output and "Traceback" not in res.output
