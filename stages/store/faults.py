"""Fault injection for the kill-anywhere tests: named save points where a test can SIGKILL this process.

`DRDC_KILL_AT=k` kills the process (SIGKILL, no cleanup, like an OOM kill or a pre-emption) at the k-th save point
it reaches; `DRDC_KILL_AT=site:k` at the k-th time it reaches the point named site (so a test can name a point
whatever order the ranks reach the others in). `DRDC_FAULT_LOG=FILE` appends each point reached ("k site"), so a
test can count the points of an uninterrupted run and pick kill points at random among them. `DRDC_KILL_RANK=r`
limits the kill to torchrun rank r (the other ranks only count). `DRDC_SLOW_AT=site:seconds` sleeps at each point
named site, so that a test of work shared between ranks does not depend on which rank the scheduler started first.
Without these variables a point costs one dict lookup.
"""
from __future__ import annotations

import os
import signal
import time

_count = 0
_at_site: dict[str, int] = {}


def point(site: str) -> None:
    global _count
    at, log, slow = os.environ.get("DRDC_KILL_AT"), os.environ.get("DRDC_FAULT_LOG"), os.environ.get("DRDC_SLOW_AT")
    if not at and not log and not slow:
        return
    if slow:
        slow_site, _, seconds = slow.rpartition(":")
        if slow_site == site:
            time.sleep(float(seconds))
    _count += 1
    if log:
        with open(log, "a") as f:
            f.write(f"{_count} {site} {os.environ.get('RANK', '0')}\n")
    _at_site[site] = _at_site.get(site, 0) + 1
    rank_ok = os.environ.get("DRDC_KILL_RANK", os.environ.get("RANK", "0")) == os.environ.get("RANK", "0")
    if at and rank_ok and _is_kill_point(at, site):
        os.kill(os.getpid(), signal.SIGKILL)


def _is_kill_point(at: str, site: str) -> bool:
    """Whether this point is the one DRDC_KILL_AT names: "k" (the k-th point) or "site:k"."""
    name, _, k = at.rpartition(":")
    if name:
        return name == site and _at_site[site] == int(k)
    return _count == int(at)


def reset() -> None:
    global _count
    _count = 0
    _at_site.clear()
