"""IdMap against the dict it replaces (luma_pl/memory/id_map.py): random assign/lookup sequences,
re-assignments, merges at every size, and the dict-like surface callers use."""

from __future__ import annotations

import numpy as np
import pytest

from luma_pl.memory import id_map
from luma_pl.memory.id_map import IdMap


@pytest.mark.parametrize("seed", range(5))
def test_random_sequences_equal_a_dict(seed, monkeypatch):
    monkeypatch.setattr(id_map, "MIN_PENDING", 7)  # merge often: every path is exercised
    rng = np.random.default_rng(seed)
    ref: dict[int, int] = {}
    m = IdMap()
    for step in range(300):
        n = int(rng.integers(0, 40))
        ids = rng.integers(-(1 << 62), 1 << 62, n) if rng.random() < 0.3 else rng.integers(0, 500, n)
        keys = rng.integers(0, 1 << 40, n)
        m.assign(ids, keys)
        ref.update(zip(ids.tolist(), keys.tolist(), strict=True))
        probe = np.concatenate([ids, rng.integers(0, 600, 20)])
        want = np.array([ref.get(i, -1) for i in probe.tolist()], np.int64)
        np.testing.assert_array_equal(m.lookup(probe), want, err_msg=f"step {step}")
        assert len(m) == len(ref)
    assert dict(m.items()) == ref and sorted(m) == sorted(ref)
    some = next(iter(ref))
    assert m[some] == ref[some] and some in m and m.get(-5, "x") == "x" and -5 not in m
    with pytest.raises(KeyError):
        m[-5]


def test_from_arrays_refuses_a_repeated_id_and_empty_lookups_work():
    with pytest.raises(ValueError, match="id 3 appears twice"):
        IdMap.from_arrays(np.array([3, 1, 3]), np.array([0, 1, 2]))
    m = IdMap.from_arrays(np.array([5, 2]), np.array([10, 20]))
    assert m.lookup(np.array([2, 5, 7])).tolist() == [20, 10, -1]
    assert IdMap().lookup(np.array([1])).tolist() == [-1] and m.lookup(np.empty(0, np.int64)).shape == (0,)


def test_bytes_per_id_stay_near_16():
    m = IdMap()
    ids = np.random.default_rng(0).permutation(200_000)
    for i in range(0, len(ids), 256):
        m.assign(ids[i:i + 256], np.arange(i, min(i + 256, len(ids))))
    assert len(m) == 200_000 and m.nbytes / len(m) <= 16 + 124 / 16 + 1
