"""The segmented hot tier (luma_pl/memory/hot.py) against exact faiss search and a model of its rows."""

import faiss
import numpy as np
import pytest

from luma_pl.memory import HotTier
from luma_pl.threads import limit_cpu_threads

limit_cpu_threads()

from vector_helpers import exact, unit  # noqa: E402


@pytest.mark.parametrize("backend", ["hnsw", "flat"])
def test_hot_matches_exact_and_filters_tombstones(backend):
    rng = np.random.default_rng(0)
    x, q = unit(rng, 600, 16), unit(rng, 20, 16)
    ids = np.arange(1000, 1600)
    hot = HotTier(16, backend, m=16, ef_search=256, tombstone_fraction=0.5, seal_rows=200)
    for s in range(0, 600, 200):
        hot.add(ids[s:s + 200], x[s:s + 200])
    if backend == "hnsw":
        assert hot.seals == 3 and len(hot.segments) == 1 and hot.mutable_rows == 0
    else:
        assert hot.seals == 0 and hot.mutable_rows == 600
    s, i = hot.search(q, 10)
    d_ref, i_ref = exact(x, ids, q, 10)
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(s, d_ref, rtol=1e-5)
    gone = ids[::5]  # 20%: below the compaction threshold, so sealed rows become filtered tombstones
    hot.remove(gone)
    assert hot.tombstones == (len(gone) if backend == "hnsw" else 0) and hot.rebuilds == 0
    keep = ~np.isin(ids, gone)
    s, i = hot.search(q, 10)
    d_ref, i_ref = exact(x[keep], ids[keep], q, 10)
    np.testing.assert_array_equal(i, i_ref)
    assert not np.isin(i, gone).any()
    np.testing.assert_allclose(hot.vectors(ids[1:3]), x[1:3])
    assert sorted(hot.audit().tolist()) == ids[keep].tolist()


def test_seal_fills_the_newest_segment_then_starts_another():
    rng = np.random.default_rng(1)
    hot = HotTier(16, "hnsw", m=8, seal_rows=100, segment_rows=250)
    for s in range(0, 500, 50):
        hot.add(np.arange(s, s + 50), unit(rng, 50, 16))
    # seals of 100 rows: 100+100 fit in 250, the third starts a second segment, and so on
    assert hot.seals == 5 and [seg.rows for seg in hot.segments] == [200, 200, 100] and hot.mutable_rows == 0
    hot.audit()


def test_fifo_removal_drops_segments_whole_and_compaction_moves_survivors():
    rng = np.random.default_rng(2)
    x = unit(rng, 400, 32)
    hot = HotTier(32, "hnsw", m=8, seal_rows=100, segment_rows=100, tombstone_fraction=0.8)
    for s in range(0, 400, 100):
        hot.add(np.arange(s, s + 100), x[s:s + 100])
    assert len(hot.segments) == 4
    hot.remove(np.arange(100))  # the oldest segment, all of it: dropped, nothing re-inserted
    assert len(hot.segments) == 3 and hot.drops == 1 and hot.rebuilds == 0 and hot.tombstones == 0
    hot.remove(np.arange(100, 170))  # 70% of the next one: tombstones
    assert hot.tombstones == 70 and hot.rebuilds == 0
    hot.remove(np.arange(170, 185))  # 85% > 80%: its 15 survivors move to the mutable segment
    assert hot.rebuilds == 1 and len(hot.segments) == 2 and hot.mutable_rows == 15 and hot.tombstones == 0
    np.testing.assert_array_equal(hot.vectors(np.arange(185, 200)), x[185:200])
    s, i = hot.search(x[190:191], 1)
    assert i[0, 0] == 190 and abs(s[0, 0] - 1) < 1e-5
    hot.compact()
    assert hot.tombstones == 0
    hot.audit()


def test_bytes_count_matches_faiss_and_compact_frees_them():
    rng = np.random.default_rng(3)
    hot = HotTier(32, "hnsw", m=8, seal_rows=150)
    x = unit(rng, 300, 32)
    hot.add(np.arange(150), x[:150])
    hot.add(np.arange(150, 300), x[150:])
    size = sum(len(faiss.serialize_index(s.index)) for s in hot.segments)
    # our count (vectors, links, offsets, levels, keys, live flags) is within 5% of faiss' own bytes
    assert abs(hot.nbytes() - 300 * 9 - size) / size < 0.05
    before = hot.nbytes()
    hot.remove(np.arange(0, 300, 10))
    assert hot.nbytes() == before  # tombstones still hold their bytes
    hot.compact()
    assert hot.nbytes() < before and hot.tombstones == 0 and len(hot) == 270


def test_state_arrays_round_trip_and_old_single_index_layout():
    rng = np.random.default_rng(4)
    x, q = unit(rng, 500, 16), unit(rng, 10, 16)
    hot = HotTier(16, "hnsw", m=8, seal_rows=128, segment_rows=256, tombstone_fraction=0.9)
    for s in range(0, 500, 100):
        hot.add(np.arange(s, s + 100), x[s:s + 100])
    hot.remove(np.arange(0, 500, 7))
    state = hot.state_arrays()
    back = HotTier(16, "hnsw", m=8, seal_rows=128, segment_rows=256, tombstone_fraction=0.9)
    back.restore(state, lambda keys: x[keys], {"hot_rebuilds": hot.rebuilds, "hot_seals": hot.seals})
    for a, b in zip(hot.search(q, 10), back.search(q, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    assert back.seals == hot.seals and back.tombstones == hot.tombstones
    np.testing.assert_array_equal(np.sort(back.audit()), np.sort(hot.audit()))
    # a snapshot written before segments: one HNSW index, its row keys and liveness
    old = faiss.IndexHNSWFlat(16, 8, faiss.METRIC_INNER_PRODUCT)
    old.add(x[:50])
    live = np.ones(50, bool)
    live[:5] = False
    legacy = HotTier(16, "hnsw", m=8)
    legacy.restore({"hot_index": faiss.serialize_index(old), "hot_ids": np.arange(50), "hot_live": live},
                   lambda keys: x[keys], {"hot_rebuilds": 2})
    assert len(legacy) == 45 and len(legacy.segments) == 1 and legacy.rebuilds == 2
    with pytest.raises(ValueError, match="segment table"):
        back.restore({**state, "hot_segments": state["hot_segments"] + 1}, lambda keys: x[keys], {})


def test_fuzz_against_a_model_of_live_rows():
    """Random adds and removals (batches, repeats of a key after its removal) against a dict model:
    audit() after every step, and with ef above the row count every search is exact."""
    rng = np.random.default_rng(5)
    d = 8
    hot = HotTier(d, "hnsw", m=8, ef_search=512, seal_rows=37, segment_rows=90, tombstone_fraction=0.6)
    model: dict[int, np.ndarray] = {}
    for step in range(300):
        if model and rng.random() < 0.45:
            live = np.array(sorted(model))
            gone = rng.choice(live, size=min(len(live), int(rng.integers(1, 20))), replace=False)
            hot.remove(gone)
            for g in gone.tolist():
                del model[g]
        else:
            free = np.setdiff1d(np.arange(400), np.array(sorted(model), dtype=np.int64))
            keys = rng.choice(free, size=min(len(free), int(rng.integers(1, 25))), replace=False)
            x = unit(rng, len(keys), d)
            hot.add(keys, x)
            model.update(zip(keys.tolist(), x, strict=True))
        assert sorted(hot.audit().tolist()) == sorted(model)
        if model and step % 10 == 0:
            keys = np.array(sorted(model))
            xb = np.stack([model[k] for k in keys.tolist()])
            q = unit(rng, 3, d)
            s, i = hot.search(q, 5)
            ref_s, _ = exact(xb, keys, q, min(5, len(keys)))
            np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(hot.vectors(keys[:4]), xb[:4])
    assert hot.seals > 0 and hot.drops + hot.rebuilds > 0
