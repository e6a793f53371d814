"""Start-up: help, the version, `cache ls` and every option error answer without loading torch or matplotlib (they
take seconds to import on a busy machine), and Ctrl-C at any moment, start-up included, ends in one line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.store.cache import RunStore

HEAVY = ("torch", "matplotlib", "sklearn", "scipy", "onnxruntime")
# Each in one fresh interpreter, in process: (argv, exit code). The root options, a command's help, a listing,
# shell completion, and errors of every kind that is about options.
CASES = [
    (["--help"], 0), (["--version"], 0), (["fuse", "--help"], 0), (["cache", "--help"], 0),
    (["--show-completion", "bash"], 0),
    (["cache", "ls", "--run", "STORE"], 0), (["cache", "ls", "--run", "STORE", "--json"], 0),
    (["--log-file", "LOG", "--verbose", "cache", "ls", "--run", "STORE"], 0),
    (["fuse", "--run", "STORE", "--gamma", "2"], 2),  # out of its domain
    (["train-base", "--run", "STORE", "--epochs", "-1"], 2),  # a domain error in a command with --device
    (["infer-diff", "--run", "STORE", "--init", "bogus"], 2),  # a choice
    (["fuse", "--run", "STORE", "--gamma", "x"], 2),  # a usage error: not a number
    (["fuse", "--run", "STORE", "--gamma", "0.5", "--gamma", "0.6"], 2),  # given twice
    (["--log-file", "LOG", "--log-file", "LOG", "cache", "ls", "--run", "STORE"], 2),  # drdc's own, given twice
    (["tune", "--bogus"], 2),  # no such option
    (["predict", "--run", "STORE"], 2),  # a missing argument
    (["ablate", "--run", "STORE", "--norm", "none", "--fusion", "gated"], 2),  # two options that do not go together
]
SCRIPT = r"""
import contextlib, io, json, sys
import typer
from drdc_cli.app import app, register_commands
register_commands()
group = typer.main.get_command(app)
codes, outputs = [], []
for args in json.loads(sys.argv[1]):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            codes.append(group.main(args, prog_name="drdc", standalone_mode=False))
        except SystemExit as e:
            codes.append(e.code)
    outputs.append(buf.getvalue())
print(json.dumps({"codes": codes, "outputs": outputs, "loaded": [m for m in json.loads(sys.argv[2]) if m in sys.modules]}))
"""


def _env() -> dict:
    # typer detects the shell from the process tree, which fails under CI or a detached job: name it instead
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "COLUMNS": "100",
            "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}


def test_help_version_listing_and_option_errors_load_neither_torch_nor_matplotlib(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    RunStore(store, create=True)
    log = tmp_path / "drdc.log"
    cases = [[str(store) if a == "STORE" else str(log) if a == "LOG" else a for a in args] for args, _ in CASES]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cases), json.dumps(HEAVY)], env=_env(),
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    for (args, want), code, text in zip(CASES, r["codes"], r["outputs"]):
        assert (code or 0) == want, f"{args}: exit {code}\n{text}"
        if want:  # an option error: one line
            lines = [ln for ln in text.splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in text, f"{args}: {text}"
    assert r["loaded"] == [], f"loaded {r['loaded']} for help, version, cache ls or an option error"
    by = dict(zip([tuple(a) for a, _ in CASES], r["outputs"]))
    assert "drdc 0.1.0" in by[("--version",)]
    assert "complete -o default -F _drdc_completion drdc" in by[("--show-completion", "bash")]
    listing = json.loads(by[("cache", "ls", "--run", "STORE", "--json")])
    assert listing["entries"] == [] and listing["current"] == {}
    text = log.read_text()  # the header, the table as printed, and with --verbose the options
    assert "INFO    drdc 0.1.0: drdc " in text and "┃ stage ┃ key ┃" in text and "DEBUG   options: run=" in text


def _drdc() -> list[str]:
    script = Path(sys.executable).parent / "drdc"  # the console script: the entry point users run
    return [str(script)] if script.exists() else [sys.executable, "-m", "drdc_cli"]


def _wait_until(pid: int, ready, timeout: float = 60.0) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if ready(pid):
                return True
        except OSError:  # gone
            return False
        time.sleep(0.002)
    return False


def _catches_sigterm(pid: int) -> bool:
    """drdc's start-up handlers are in place (Python itself never catches SIGTERM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def _loads_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc to know when to interrupt")
@pytest.mark.parametrize("moment", ["start-up", "loading torch"])
def test_ctrl_c_at_start_up_is_one_line(moment: str, tmp_path: Path) -> None:
    """SIGINT while the command line starts (typer, rich, the command modules), and while a command loads torch:
    one line on stderr, exit 130, no traceback. The moment is read from /proc, not guessed with a sleep."""
    store = tmp_path / "s.zarr"
    RunStore(store, create=True)
    args = ["--help"] if moment == "start-up" else ["extract", "--run", str(store)]
    proc = subprocess.Popen([*_drdc(), *args], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    reached = _wait_until(proc.pid, _catches_sigterm if moment == "start-up" else _loads_torch)
    if reached:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if not reached or proc.returncode not in (130, -signal.SIGINT):
        pytest.skip(f"the command ended before the signal (exit {proc.returncode})")  # a very fast machine
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode == 130 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("interrupted"), err


@pytest.mark.parametrize("words,want", [("drdc fuse --norm ", ["none", "pixel", "quantile"]),
                                        ("drdc index --layout v", ["visa"]), ("drdc inf", ["infer-base", "infer-diff"])])
def test_shell_completion_of_commands_and_choices_loads_no_torch(words: str, want: list[str]) -> None:
    """What `drdc --install-completion` installs asks drdc for the candidates: commands, and an option's choices
    from its domain."""
    script = Path(sys.executable).parent / "drdc"  # completion is keyed by the program's name: the console script
    if not script.exists():
        pytest.skip("drdc is not installed as a console script here")
    env = {**_env(), "COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1),
           "_DRDC_COMPLETE": "complete_bash", "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == want, proc.stdout + proc.stderr[-2000:]
    loaded = {ln.rsplit("|", 1)[-1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")}
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
