"""A read-only store serves what it holds: every command whose results are all cached works on a store mounted
read-only (or chmod -R a-w), and one that must write says so in one line; the store is not changed.

Generated from the store: the rerun line of every entry (each must answer "cached"), then the commands that only
read it. The commands run in a subprocess that sees the store read-only: a read-only bind mount in a mount
namespace of its own when this runs as root (root writes through chmod), else chmod -R a-w.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages.store.cache import RunStore
from drdc_cli.commands import entry_line as entry_command

from conftest import copy_run

SCRIPT = """
import json, sys
from typer.testing import CliRunner
from drdc_cli.app import app, register_commands
register_commands()
runner = CliRunner()
out = []
for args in json.load(open(sys.argv[1])):
    res = runner.invoke(app, args)
    out.append({"args": args, "exit": res.exit_code, "stdout": res.stdout, "stderr": res.stderr,
                "exception": None if res.exception is None or isinstance(res.exception, SystemExit)
                else repr(res.exception)})
json.dump(out, open(sys.argv[2], "w"))
"""


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def run_read_only(store: Path, commands: list[list[str]], tmp: Path) -> list[dict]:
    """Run each command (argv after `drdc`) in one process that sees `store` read-only."""
    (tmp / "cmds.json").write_text(json.dumps(commands))
    (tmp / "script.py").write_text(SCRIPT)
    py = [sys.executable, str(tmp / "script.py"), str(tmp / "cmds.json"), str(tmp / "out.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    if os.geteuid() == 0:
        unshare = shutil.which("unshare")
        if unshare is None:
            pytest.skip("root without unshare: no way to make a read-only store here")
        s = str(store)
        cmd = [unshare, "-m", "sh", "-c", f'mount --bind "{s}" "{s}" && mount -o remount,bind,ro "{s}" && exec "$@"',
               "sh", *py]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if res.returncode != 0 and "mount" in res.stderr and not (tmp / "out.json").exists():
            pytest.skip(f"cannot mount read-only here: {res.stderr.strip()[:200]}")
    else:
        subprocess.run(["chmod", "-R", "a-w", str(store)], check=True)
        try:
            res = subprocess.run(py, env=env, capture_output=True, text=True, timeout=300)
        finally:
            subprocess.run(["chmod", "-R", "u+w", str(store)], check=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads((tmp / "out.json").read_text())


def test_a_read_only_store_serves_what_it_holds(full_run_pristine, tiny_data, tmp_path):
    run = copy_run(full_run_pristine, tmp_path / "ro.zarr")
    store = RunStore(run)
    image = str(sorted((tiny_data / "disc" / "test").rglob("*.png"))[0])
    out = tmp_path / "out"
    cached = [shlex_split(entry_command(e))[1:] for e in store.entries()]
    readers = [["report", "--run", str(run)], ["cache", "ls", "--run", str(run)], ["cache", "verify", "--run", str(run)],
               ["config", "--run", str(run)], ["predict", "--run", str(run), image],
               ["predict", "--run", str(run), image, "--base-only", "--out", str(out / "p")],
               ["bound", "--run", str(run), "--scales", "2"], ["ablate", "--run", str(run), "--c", "1,8"],
               ["report", "--run", str(run), "--csv", str(out / "m.csv")]]
    writers = [["fuse", "--run", str(run), "--c", "1,8", "--gamma", "0.5"], ["calibrate", "--run", str(run)],
               ["cache", "gc", "--run", str(run), "--stale"]]
    before = _snapshot(run)
    results = run_read_only(run, cached + readers + writers, tmp_path)
    assert _snapshot(run) == before, "the read-only store changed"
    bad = []
    for r in results[:len(cached)]:
        if r["exit"] != 0 or "cached" not in r["stdout"]:
            bad.append(f"{' '.join(r['args'][:2])}: exit {r['exit']} {r['stderr'][-300:]}")
    for r in results[len(cached):len(cached) + len(readers)]:
        if r["exit"] != 0:
            bad.append(f"{' '.join(r['args'][:3])}: exit {r['exit']} {r['stderr'][-300:]}")
    for r in results[len(cached) + len(readers):]:
        errors = [ln for ln in r["stderr"].splitlines() if ln.startswith("error:")]
        if r["exit"] == 0 or len(errors) != 1 or "read-only" not in errors[0] or r["exception"]:
            bad.append(f"{' '.join(r['args'][:2])} must say in one line that it must write: {r['stderr'][-300:]}")
    assert len(cached) >= 9 and not bad, f"{len(bad)} of {len(results)}:\n" + "\n".join(bad)
    assert (out / "m.csv").is_file() and (out / "p" / "predictions.csv").is_file()


def shlex_split(line: str) -> list[str]:
    import shlex

    return shlex.split(line)
