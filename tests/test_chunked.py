"""The chunked stages' scaffold: pending chunks only, flags after the body (never for a body that raised), only in
the entries that had the chunk pending, the same chunks whether claimed (shared) or taken in order."""
from __future__ import annotations

import numpy as np
import pytest

from stages.pipeline.chunked import chunks
from stages.store.cache import RunStore
from stages.store.claims import CHUNK


def _entries(tmp_path, n: int):
    s = RunStore(tmp_path / "r.zarr", create=True)
    a, _ = s.begin("infer_diff", {"c": 1}, {}, exclusive=False)
    b, _ = s.begin("infer_diff", {"c": 8}, {}, exclusive=False)
    return a, b


@pytest.mark.parametrize("shared", [False, True])
def test_pending_chunks_only_and_flags_where_pending(tmp_path, shared):
    n = 3 * CHUNK + 2
    a, b = _entries(tmp_path, n)
    a.require_done(n)[0:CHUNK] = 1  # chunk 0 done in a only: still pending (b), and a's flags are left alone
    b.require_done(n)[0:CHUNK] = 0
    a.require_done(n)[CHUNK:2 * CHUNK] = 1
    b.require_done(n)[CHUNK:2 * CHUNK] = 1  # chunk 1 done everywhere: skipped
    seen, marked_before = [], []
    for lo, hi in chunks([a, b], n, "test", progress=False, shared=shared):
        seen.append((lo, hi))
        marked_before.append(bool(b.require_done(n)[lo:hi].any()))  # the body runs before its flags
    assert seen == [(0, CHUNK), (2 * CHUNK, 3 * CHUNK), (3 * CHUNK, n)]
    assert marked_before == [False, False, False]
    assert a.require_done(n)[:].all() and b.require_done(n)[:].all()


def test_a_body_that_raises_leaves_its_chunk_pending(tmp_path):
    n = 2 * CHUNK
    a, b = _entries(tmp_path, n)
    with pytest.raises(RuntimeError):
        for lo, hi in chunks([a, b], n, "test", progress=False):
            if lo == CHUNK:
                raise RuntimeError("killed")
    assert a.pending(n) == b.pending(n) == [(CHUNK, 2 * CHUNK)]
    assert np.array_equal(a.require_done(n)[:], np.r_[np.ones(CHUNK), np.zeros(CHUNK)])
