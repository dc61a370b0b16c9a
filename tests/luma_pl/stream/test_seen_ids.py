"""SeenIds (the replay rule's id set) against a Python set: the same first arrivals batch by batch
(repeats inside a batch, replays of old ids, candidate masks), the same size and members, and a
state_dict round trip mid-stream that continues identically."""

from __future__ import annotations

import numpy as np
import pytest

from luma_pl.stream.pool import SeenIds


@pytest.mark.parametrize("seed", range(3))
def test_first_arrivals_equal_a_python_set(seed):
    rng = np.random.default_rng(seed)
    seen, ref = SeenIds(), set()
    restored = None
    for b in range(300):
        n = int(rng.integers(0, 300))
        ids = rng.integers(0, 5000, n)  # small id range: many replays and in-batch repeats
        cand = rng.random(n) < 0.9
        want = np.zeros(n, bool)
        for i, v in enumerate(ids.tolist()):
            if cand[i] and v not in ref:
                ref.add(v)
                want[i] = True
        got = seen.first_arrivals(ids, cand)
        np.testing.assert_array_equal(got, want, err_msg=f"batch {b}")
        if restored is not None:
            np.testing.assert_array_equal(restored.first_arrivals(ids, cand), want)
        if b == 150:
            restored = SeenIds()
            restored.load_state_dict(seen.state_dict())
        assert len(seen) == len(ref)
    assert seen.sorted().tolist() == sorted(ref) == restored.sorted().tolist()
    assert seen.run_count <= 2 + int(np.log2(max(len(ref), 2)))
    probe = rng.integers(0, 6000, 500)
    np.testing.assert_array_equal(seen.contains(probe), [v in ref for v in probe.tolist()])
    seen.add(probe)  # add skips ids already present
    assert len(seen) == len(ref | set(probe.tolist()))
