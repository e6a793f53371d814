"""A refused command leaves nothing behind: every command that takes --run, walked over the places --run can
point to that are not a usable store, and over a store that lacks what the command reads. The whole folder the
case lives in (the user's folders, the dataset, the store) is compared file by file before and after.

The commands come from typer (tests/test_option_domains.py walks their option values the same way), so a new
command is walked without an edit here.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import TINY_INDEX
from test_option_domains import COMMANDS, _base, _snapshot

WITH_RUN = sorted(p for p, cmd in COMMANDS.items() if any(o.opts[0] == "--run" for o in cmd.params
                                                           if o.param_type_name == "option"))


def _places(root: Path, data: Path) -> dict[str, Path]:
    """Where --run may point that is not a usable run store."""
    (root / "empty").mkdir()
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("the user's own file")
    (root / "mine" / "sub").mkdir()
    (root / "afile.txt").write_text("a file")
    return {"missing": root / "nothing" / "r.zarr", "a file": root / "afile.txt", "a user's folder": root / "mine",
            "an empty folder": root / "empty", "the dataset": data, "inside a file": root / "afile.txt" / "r.zarr"}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """A store holding nothing yet (every command but index and run lacks its input)."""
    from stages.store.cache import RunStore
    from stages.store.rollback import forget_active

    path = RunStore(tmp_path_factory.mktemp("empty") / "r.zarr", create=True).path
    forget_active()  # made outside a command: no command's to roll back
    return path


@pytest.mark.parametrize("path", WITH_RUN, ids=" ".join)
def test_a_refused_command_leaves_nothing_behind(path, tiny_data, empty_store, tmp_path, cli):
    root = tmp_path / "case"
    root.mkdir()
    data = Path(shutil.copytree(tiny_data, root / "data"))
    store = Path(shutil.copytree(empty_store, root / "store.zarr"))
    places = {**_places(root, data), "a store without the inputs": store}
    new = root / "new-out"
    failures = []
    for name, where in places.items():
        if path in (("index",), ("run",)) and name in ("missing", "an empty folder", "a store without the inputs"):
            continue  # they make a store, or its first result, there: not a refusal
        if path in (("cache", "ls"), ("cache", "verify"), ("cache", "gc"), ("config",)) and name == "a store without the inputs":
            continue  # they read what there is
        rest = [a for a in _base(path, store, data, new)]
        if path == ("bound",):
            rest = []
        if "--run" in rest:
            rest[rest.index("--run") + 1] = where
        else:
            rest += ["--run", where]
        args = [*path, *rest]
        if path == ("index",):
            args += TINY_INDEX
        if path == ("cache", "gc"):
            args += ["--stale"]
        before = _snapshot(root)
        res = cli(*args, code=None)
        after = _snapshot(root)
        if res.exit_code == 0 or "Traceback" in res.output or not isinstance(res.exception, SystemExit):
            failures.append(f"{name}: accepted or a traceback ({res.exception!r})\n{res.output[-300:]}")
        elif after != before or new.exists() or (root / "nothing").exists():
            failures.append(f"{name}: left {sorted(set(after) - set(before))}, changed "
                            f"{sorted(k for k in before if k in after and after[k] != before[k])}, removed "
                            f"{sorted(set(before) - set(after))}, made folders: {new.exists() or (root / 'nothing').exists()}")
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(root / "nothing", ignore_errors=True)
    assert not failures, f"{' '.join(path)}: {len(failures)} refusals left something behind:\n" + "\n".join(failures)
