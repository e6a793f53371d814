"""Advisory file locks (flock) that name their holder, for run stores shared between processes.

The kernel drops an flock when its process dies, however it dies, so a SIGKILLed holder never leaves a stale lock.
Each lock file keeps the holder's pid, host, rank and command line, so a refused writer can say who holds it.
Locks are per path and re-entrant within a process; `release_all` drops every lock this process still holds
(the CLI calls it when a command ends, also on errors, so in-process reruns start clean).

Safe filesystems: local disks, NFSv4 (flock is mapped to byte-range locks), Lustre/GPFS mounted with flock
support. Not safe: NFSv3 without lockd, object-store FUSE mounts (s3fs, gcsfuse), which ignore or fake flock.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

_HELD: dict[str, "FileLock"] = {}


def holder_info() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "rank": int(os.environ.get("RANK", "0")),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["drdc", *sys.argv[1:]])}


def describe(info: dict) -> str:
    if not info:
        return "another process"
    rank = f" (rank {info['rank']})" if info.get("rank") else ""
    return f"pid {info.get('pid')} on {info.get('host')}{rank} since {info.get('since')} (`{info.get('command', '?')}`)"


class FileLock:
    """An exclusive flock on `path`; the file is created if missing and never deleted (deleting a lock file
    while another process waits on it would let two holders coexist)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None
        self.depth = 0

    def acquire(self, blocking: bool = True, record: bool = True) -> bool:
        key = str(self.path)
        mine = _HELD.get(key)
        if mine is not None:  # re-entrant within this process
            mine.depth += 1
            if mine is not self:
                self.fd, self.depth = mine.fd, mine.depth
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise
            # a read-only store: lock the file for reading (flock needs no write access) so a writer with rights
            # is still waited for; without a lock file nobody can have written one, so there is nothing to wait for
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                self.fd, self.depth = None, 1
                _HELD[key] = self
                return True
            record = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        if record:  # a mere probe (is_locked) must not overwrite the last holder's note
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder_info()).encode(), 0)
        self.fd, self.depth = fd, 1
        _HELD[key] = self
        return True

    def release(self) -> None:
        mine = _HELD.get(str(self.path))
        if mine is None:
            return
        mine.depth -= 1
        if mine.depth <= 0:
            _HELD.pop(str(self.path), None)
            if mine.fd is not None:
                try:
                    fcntl.flock(mine.fd, fcntl.LOCK_UN)
                finally:
                    os.close(mine.fd)
            mine.fd = None

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def __enter__(self) -> "FileLock":
        self.acquire(blocking=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(path: Path) -> bool:
    """Whether another process holds the lock at path (this process's own locks count as free)."""
    if str(path) in _HELD or not Path(path).exists():
        return False
    lk = FileLock(path)
    if lk.acquire(blocking=False, record=False):
        lk.release()
        return False
    return True


def release_all() -> None:
    for lk in list(_HELD.values()):
        lk.depth = 1
        lk.release()
