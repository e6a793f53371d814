"""drdc report --html: one self-contained file, checked as data and in a real headless browser (Debian's
chromium, when installed): it loads with no console error and its screenshot shows the metric table."""
from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.store.cache import RunStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs, self.tags, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.srcs += [v for k, v in attrs if k in ("src", "href")]

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def page(full_run_pristine, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from drdc_cli.app import app, register_commands

    register_commands()
    path = tmp_path_factory.mktemp("html") / "report.html"
    res = CliRunner().invoke(app, ["report", "--run", str(full_run_pristine), "--html", str(path), "-q"])
    assert res.exit_code == 0, res.output
    return path


def test_the_page_holds_everything_itself(page, full_run_pristine):
    p = _Page()
    p.feed(page.read_text())
    assert "script" not in p.tags, "no script: nothing to fail in a browser"
    assert p.srcs and all(s.startswith("data:image/png;base64,") for s in p.srcs), "an external file or URL"
    text = " ".join(p.text)
    store = RunStore(full_run_pristine)
    base, fused = (e.key for e in store.entries() if e.stage == "score")
    assert "TEST" in text and "VALIDATION" in text and base in text and fused in text  # base and DRDC side by side
    n_cats = len(store.current("index").attrs["categories"])
    assert p.tags.count("img") == n_cats * 4  # per category: ROC, histograms, worst cases of base and of DRDC
    assert text.index("VALIDATION") < text.index("TEST")  # the order `drdc report` prints them in
    assert "base only:" not in text and "class='note'" not in page.read_text()  # gamma 0.9: the fusion is DRDC


def test_a_base_only_fusion_is_said_plainly(full_run, cli, tmp_path):
    """gamma 0: the fused column is H_base. The page and `drdc report` say so, and why: tune chose it on
    validation, or fuse was asked for it."""
    cli("tune", "--run", full_run, "--rounds", "1", "--gammas", "0,0.9", "--filters", "1,11", "--eval-size", "32",
        "-q")
    store = RunStore(full_run)
    tune = store.current("tune")
    trials = tune.attrs["trials"]
    q = next(r for r in trials if r["settings"]["gamma"] == 0)
    q["metrics"]["mean"] = 1.0  # validation preferred base only (what tune then makes current, as below)
    tune.update(trials=trials)
    s = q["settings"]
    cli("fuse", "--run", full_run, "--gamma", "0", "--norm", s["norm"], "--filter", str(s["filter"]))
    cli("score", "--run", full_run, "--source", "fuse")
    res = cli("report", "--run", full_run, "--html", tmp_path / "r.html", "--worst", "1", "-q")
    p = _Page()
    p.feed((tmp_path / "r.html").read_text())
    text = " ".join(" ".join(p.text).split())
    why = f"Why: tune {tune.key} chose gamma 0 on the validation images (mean 100.0 against"
    assert "the 'fuse' column is base only" in text and why in text, text[:2000]
    assert text.index("base only") < text.index("VALIDATION")  # said before the tables
    assert why in " ".join(res.output.split())
    cli("fuse", "--run", full_run, "--gamma", "0", "--norm", s["norm"], "--filter", "21")  # not tune's choice
    cli("score", "--run", full_run, "--source", "fuse")
    out = " ".join(cli("report", "--run", full_run).output.split())
    assert "is base only" in out and "Why: fuse was run with --gamma 0." in out


def test_a_console_error_would_be_seen(tmp_path):
    """The detector of the browser test below, on a page that has one."""
    if not CHROMIUM:
        pytest.skip("no chromium on this machine")
    bad = tmp_path / "bad.html"
    bad.write_text("<p>x</p><script>undefined_fn();</script>")
    assert _console_errors(_browse(bad, tmp_path / "bad.png"))


def _browse(page: Path, shot: Path) -> str:
    res = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--window-size=1100,900", f"--screenshot={shot}", "--enable-logging=stderr", "--v=0",
                          page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    return res.stderr


def _console_errors(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if ":CONSOLE" in ln and re.search(r"error|uncaught|failed", ln, re.I)]


@pytest.mark.skipif(not CHROMIUM, reason="no chromium on this machine (apt-get install chromium)")
def test_the_page_loads_in_a_browser_and_shows_the_table(page, tmp_path):
    shot = tmp_path / "shot.png"
    assert not _console_errors(_browse(page, shot))
    a = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    top = a[80:400]  # under the title: the test table's grid lines and digits
    assert (top < 100).mean() > 0.01 and (top > 200).mean() > 0.3, "no table drawn where it belongs"
    rows = (a[80:400] < 150).mean(axis=1)
    assert (rows > 0.3).sum() >= 4, "no horizontal grid lines of a table"
    lines = (a[80:400] < 230).mean(axis=1)  # the grid's light grey (#ccc) across the page, margins aside
    assert (lines > 0.85).sum() >= 4, "the table does not take the page's full width"
