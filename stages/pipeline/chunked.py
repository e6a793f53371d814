"""The scaffold of the chunked stages (index, extract, infer-base, infer-diff, fuse, calibrate), beside the
trainers' (stages.pipeline.training): the chunks of images still to compute, the resume bar, the done flags.

    for a, b in chunks([entry], n, "extract", progress, shared=True):
        features[a:b] = ...  # the chunk's data; its done flags are set after the body, never before

A chunk is pending while any entry's done flags of it are not all set; whole chunks are recomputed, so a resumed run
batches exactly as an uninterrupted one. shared: the entries were begun non-exclusively, and torchrun ranks or
processes on the same store split the chunks by claim (stages.store.claims); else this process does them in order.
A body that raises leaves that chunk's flags unset (it is redone on the rerun).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from tqdm import tqdm

from stages.pipeline import dist
from stages.store.cache import Entry
from stages.store.claims import claim_chunks


def chunks(entries: list[Entry], n: int, desc: str, progress: bool, shared: bool = False
           ) -> Iterator[tuple[int, int]]:
    """(start, stop) of each pending chunk of n images; after the caller's body, the chunk's done flags are set in
    each entry that had it pending (stages.store.cache.Entry.mark_done) and the bar moves."""
    dones = [e.require_done(n) for e in entries]
    todo = sorted({c for e in entries for c in e.pending(n)})
    source = claim_chunks(entries, n, rank=dist.rank(), world=dist.world_size()) if shared else iter(todo)
    with tqdm(total=n, initial=n - sum(b - a for a, b in todo), desc=desc, unit="img", disable=not progress) as bar:
        for a, b in source:
            pending = [(e, d) for e, d in zip(entries, dones) if not np.all(d[a:b])]
            yield a, b
            for e, d in pending:  # data of every entry first (the body), then the flags
                e.mark_done(d, a, b)
            bar.update(b - a)
