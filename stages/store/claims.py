"""Chunk claiming: how several processes (torchrun ranks, or plain processes on one store) split the images of
shared entries without doing a chunk twice, and take over the chunk of a claimant that died."""
from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Iterator

from stages.store.locks import FileLock

if TYPE_CHECKING:
    from stages.store.cache import Entry

CHUNK = 8  # images per chunk: the unit of work, resume and sharding


def claim_chunks(entries: list[Entry], n: int, chunk: int = CHUNK, rank: int = 0,
                 world: int = 1) -> Iterator[tuple[int, int]]:
    """Yield (start, stop) of each chunk of images still pending in any of `entries`, while this process holds
    that chunk's claim in every entry; the caller writes the chunk's data and done flags before asking for the
    next. Chunks are tried first without waiting, this rank's share (chunk index % world == rank) first; then the
    ones other processes held are waited for and taken over if their holder died before finishing them. So
    torchrun ranks, or plain processes started on the same store, split the work, and all return once every
    chunk is done. A chunk is computed the same way whoever computes it, so the result does not depend on
    the number of processes."""
    starts = list(range(0, n, chunk))
    order = [s for i, s in enumerate(starts) if i % world == rank] + [s for i, s in enumerate(starts) if i % world != rank]
    dones = [e.require_done(n, chunk) for e in entries]
    locks_of = lambda s: [FileLock(e.path / "claims" / f"{s // chunk}.lock") for e in sorted(entries, key=lambda e: str(e.path))]  # noqa: E731

    def pending(s: int) -> bool:
        return any(not d[s : s + chunk].all() for d in dones)

    for blocking in (False, True):
        later = []
        for s in order:
            if not pending(s):
                continue
            with ExitStack() as held:
                got = True
                for lk in locks_of(s):  # one global order (sorted paths): waiting claimants cannot deadlock
                    if not lk.acquire(blocking=blocking):
                        got = False
                        break
                    held.callback(lk.release)
                if not got:
                    later.append(s)
                    continue
                if pending(s):  # re-read under the claim: another process may have finished it
                    yield s, min(s + chunk, n)
        order = later
