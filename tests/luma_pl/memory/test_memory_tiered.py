"""TieredMemory: admission, budgets, migration, rescoring, errors, persistence, checkpoint callback."""

import dataclasses

import faiss
import numpy as np
import pytest
import torch

from luma_pl.memory import (
    BUFFER,
    HOT,
    WARM,
    MemoryConfig,
    TieredMemory,
    from_state_dict,
    load,
    save,
    state_dict,
)
from luma_pl.threads import limit_cpu_threads

limit_cpu_threads()
D = 16


def unit(rng, n, d=D):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def cfg(**kw):
    base = dict(dim=D, hot_max_items=40, hot_max_bytes=1 << 20, warm_max_items=600, warm_max_bytes=1 << 22,
                nlist=4, nprobe=4, pq_m=4, pq_nbits=4, train_points_per_centroid=20, ef_search=128, hnsw_m=8,
                zeta_window=10_000)
    return MemoryConfig(**(base | kw))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def exact_topk(x, ids, q, k):
    s = q @ x.T
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids[top], np.take_along_axis(s, top, 1)


def test_newest_first_lru_admission_and_budgets(rng):
    m = TieredMemory(cfg())
    x = unit(rng, 200)
    for s in range(0, 200, 25):
        m.insert(np.arange(s, s + 25), x[s : s + 25])
        counts = m.audit()
        assert counts["hot"] <= 40
    # newest 40 are hot; the rest warm (still in the exact buffer: 160 < 320 training points)
    assert {m.location(i) for i in range(160, 200)} == {"hot"}
    assert {m.location(i) for i in range(0, 160)} == {"buffer"}
    b = m.bytes_by_tier()
    assert b["hot"] <= m.cfg.hot_max_bytes and b["warm"] <= m.cfg.warm_max_bytes
    # exact tiers: results equal brute force over everything
    q = unit(rng, 7)
    r = m.search(q, 10)
    ids, sc = exact_topk(x, np.arange(200), q, 10)
    np.testing.assert_array_equal(r.ids, ids)
    np.testing.assert_allclose(r.scores, sc, rtol=1e-5)
    assert set(np.unique(r.tiers)) <= {HOT, BUFFER} and (r.zeta == 0).all()
    m.close()


def test_training_rescoring_zeta_and_warm_eviction(rng):
    m = TieredMemory(cfg(warm_max_items=500))
    x = unit(rng, 700)
    m.insert(np.arange(700), x)  # 40 hot, 500 warm (trained), 160 evicted
    counts = m.audit()
    assert counts == {"hot": 40, "warm": 500, "buffer": 0, "evicted": 160}
    assert m.stats()["evictions"] == 160 and m.warm.trained
    live = np.array([i for i in range(700) if m.location(i) != "evicted"])
    q = unit(rng, 5)
    ref_ids, ref_sc = exact_topk(x[live], live, q, 5)
    r = m.search(q, 5, oversample=200)  # all candidates rescored: exact
    np.testing.assert_array_equal(r.ids, ref_ids)
    np.testing.assert_allclose(r.scores, ref_sc, rtol=1e-5)
    assert (r.zeta == 0).all() and r.zeta_max > 0
    raw = m.search(q, 5, rescore=False)
    warm_hits = raw.tiers == WARM
    assert warm_hits.any() and (raw.zeta[warm_hits] > 0).all() and (raw.zeta[warm_hits] <= raw.zeta_max).all()
    # PQ scores are within zeta of the exact score of the same item
    exact_s = np.einsum("qd,qkd->qk", q, x[raw.ids])
    assert (np.abs(raw.scores - exact_s) <= raw.zeta + 1e-5).all()
    m.close()


def test_memory_retrains_on_zeta_drift(rng):
    m = TieredMemory(cfg(hot_max_items=0, pq_nbits=6, train_points_per_centroid=5, zeta_window=32, warm_max_items=2000))
    sub = np.zeros((320, D), np.float32)  # training data on a 4-d subspace ...
    sub[:, :4] = rng.standard_normal((320, 4))
    sub /= np.linalg.norm(sub, axis=1, keepdims=True)
    m.insert(np.arange(320), sub)
    assert m.warm.trained and m.stats()["retrains"] == 0
    zmax_before = m.zeta_max
    m.insert(np.arange(1000, 1400), unit(rng, 400))  # ... then the full space: PQ error jumps
    assert m.stats()["retrains"] >= 1 and m.warm.trainings >= 2
    m.audit()
    assert m.zeta_max > 0 and zmax_before >= 0
    m.close()


def test_config_rejects_nlist_whose_training_buffer_cannot_fit():
    with pytest.raises(ValueError, match="training needs"):
        MemoryConfig(dim=512, warm_max_items=100_000, warm_max_bytes=1 << 20, nlist=100).validate()


def test_promote_demote_evict_and_hits(rng):
    m = TieredMemory(cfg())
    x = unit(rng, 100)
    m.insert(np.arange(100), x)
    m.promote([0, 1])
    assert m.location(0) == m.location(1) == "hot"
    np.testing.assert_allclose(m.hot.vectors(np.array([m.key_of[0]])), x[:1])  # exact, from originals
    m.demote([99])
    assert m.location(99) == "buffer"
    m.evict([5, 99])
    assert m.location(5) == "evicted" and m.stats()["evictions"] == 2
    with pytest.raises(ValueError, match="cannot demote id 5: it is evicted"):
        m.demote([5])
    with pytest.raises(ValueError, match="never inserted"):
        m.promote([12345])
    for _ in range(3):
        m.search(x[10:11], 1)
    assert m.hits[m.key_of[10]] == 3
    assert m.migrate()["promoted"] >= 1 and m.location(10) == "hot"
    m.audit()
    m.close()


def test_input_errors_name_the_argument(rng):
    m = TieredMemory(cfg())
    x = unit(rng, 4)
    m.insert([1, 2], x[:2])
    with pytest.raises(ValueError, match="already in the memory"):
        m.insert([2, 3], x[2:4])
    with pytest.raises(ValueError, match="repeats"):
        m.insert([7, 7], x[:2])
    with pytest.raises(ValueError, match=r"vectors must have shape \(1, 16\)"):
        m.insert([8], unit(rng, 1, 8))
    bad = x[:1].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="vectors row 0 has NaN"):
        m.insert([8], bad)
    with pytest.raises(ValueError, match="L2-normalised"):
        m.insert([8], 2 * x[:1])
    with pytest.raises(ValueError, match="k=0"):
        m.search(x[:1], 0)
    with pytest.raises(ValueError, match="queries must have shape"):
        m.search(np.ones(3, np.float32), 1)
    m.insert([2], x[3:4], upsert=True)  # explicit upsert replaces the vector
    assert m.search(x[3:4], 1).ids[0, 0] == 2 and m.stats()["replaced"] == 1
    m.audit()
    m.close()


def test_hot_byte_budget_counts_graph_links(rng):
    # room for ~10 rows of 16 floats + links: the item budget (40) is not the binding one
    m = TieredMemory(cfg(hot_max_bytes=10 * (D * 4 + 9 + 16 * 4 + 12)))
    m.insert(np.arange(60), unit(rng, 60))
    assert len(m.hot) < 40 and m.hot.nbytes() <= m.cfg.hot_max_bytes
    m.audit()
    m.close()


def test_save_load_answers_identically_and_detects_corruption(rng, tmp_path):
    m = TieredMemory(cfg(warm_max_items=500))
    x = unit(rng, 450)
    m.insert(np.arange(450), x)
    m.evict([3, 4])
    m.demote(m.ids[m.keys_in(HOT)[:5]])
    q = unit(rng, 20)
    path = str(tmp_path / "snap")
    save(m, path)
    save(m, path)  # replacing an existing snapshot works
    m2 = load(path)
    for kw in ({}, {"rescore": False}, {"oversample": 2}):
        a, b = m.search(q, 10, record_hits=False, **kw), m2.search(q, 10, record_hits=False, **kw)
        for f in ("ids", "scores", "tiers", "zeta"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert m2.stats() == m.stats()
    m2.insert([9999], unit(rng, 1))  # a loaded memory keeps working
    m2.audit()
    # state_dict round trip (checkpoint path)
    m3 = from_state_dict(state_dict(m))
    np.testing.assert_array_equal(m3.search(q, 10).ids, m.search(q, 10).ids)
    with open(tmp_path / "snap" / "originals.f32", "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff")
    with pytest.raises(ValueError, match="checksum"):
        load(path)
    for mem in (m, m2, m3):
        mem.close()


def test_checkpoint_callback_round_trip_weights_only(rng, tmp_path):
    from callbacks.memory_checkpoint import STATE_KEY, MemoryCheckpoint

    m = TieredMemory(cfg())
    x = unit(rng, 80)
    m.insert(np.arange(80), x)
    cb = MemoryCheckpoint(m)
    ckpt = {}
    cb.on_save_checkpoint(None, None, ckpt)
    torch.save(ckpt, tmp_path / "c.ckpt")
    loaded = torch.load(tmp_path / "c.ckpt", weights_only=True)
    got = []
    cb2 = MemoryCheckpoint(TieredMemory(cfg()), on_restore=got.append)
    cb2.on_load_checkpoint(None, None, loaded)
    assert got and cb2.memory is got[0]
    np.testing.assert_array_equal(cb2.memory.search(x[:5], 3).ids, m.search(x[:5], 3).ids)
    cb2.on_load_checkpoint(None, None, {})  # old checkpoint without memory state: no-op
    assert STATE_KEY in ckpt
    m.close()
    cb2.memory.close()


@pytest.mark.gpu
@pytest.mark.skipif(not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0), reason="needs faiss GPU + CUDA")
def test_gpu_flat_hot_tier_is_exact(rng):
    m = TieredMemory(cfg(hot_backend="gpu_flat"))
    x = unit(rng, 30)
    m.insert(np.arange(30), x)
    ids, _ = exact_topk(x, np.arange(30), x[:4], 5)
    np.testing.assert_array_equal(m.search(x[:4], 5).ids, ids)
    m.evict([0])
    m.audit()
    m.close()


def test_bytes_by_tier_charges_bookkeeping_and_list_capacity(rng):
    from luma_pl.memory.tiered import ITEM_BOOKKEEPING_BYTES

    m = TieredMemory(cfg(warm_max_items=500))
    m.insert(np.arange(450), unit(rng, 450))
    b, s = m.bytes_by_tier(), m.stats()
    assert b["hot"] >= s["hot"] * (D * 4 + ITEM_BOOKKEEPING_BYTES)
    w = m.warm
    inv = w.index.invlists
    sizes = np.array([inv.list_size(i) for i in range(w.nlist)])
    cap = w.gens[-1].list_cap
    assert len(w.gens) == 1 and (cap >= sizes).all()  # capacity tracked per list, never below the size
    assert w.list_spare_bytes() == (cap.sum() - sizes.sum()) * (w.index.code_size + 8)
    assert b["warm"] == w.fixed_bytes() + s["warm"] * (w.index.code_size + 12 + ITEM_BOOKKEEPING_BYTES) + w.list_spare_bytes()
    m.evict(np.arange(100))  # evicted ids stay known: their bookkeeping is outside the budgets
    assert m.bytes_by_tier()["bookkeeping"] > b["bookkeeping"]
    q = unit(rng, 5)
    before = m.search(q, 5, rescore=False, record_hits=False)
    spare, warm_bytes = w.list_spare_bytes(), m.bytes_by_tier()["warm"]
    assert spare > 0  # removals shrink lists, never their capacity
    w.compact_lists()  # lists reallocated to their sizes: no spare bytes, same codes and answers
    assert w.list_spare_bytes() == 0 and m.bytes_by_tier()["warm"] == warm_bytes - spare
    after = m.search(q, 5, rescore=False, record_hits=False)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.scores, after.scores)
    m.audit()
    m.close()


def test_auto_migrate_every_n_searches(rng):
    m = TieredMemory(cfg(migrate_every_n_searches=3, promote_min_hits=2))
    x = unit(rng, 100)
    m.insert(np.arange(100), x)
    assert m.location(10) == "buffer"
    m.search(x[10:11], 1)
    m.search(x[10:11], 1)
    assert m.location(10) == "buffer"  # two searches: no migration yet
    m.search(x[10:11], 1, record_hits=False)  # does not count
    m.search(x[11:12], 1)  # third recorded search: migrate() runs, id 10 has 2 hits
    assert m.location(10) == "hot" and m.stats()["auto_migrations"] >= 1
    m.audit()
    m.close()


def test_hot_while_room_streams_to_warm_once_hot_is_full(rng):
    from luma_pl.memory import HotWhileRoom

    m = TieredMemory(cfg(), policy=HotWhileRoom())
    x = unit(rng, 300)
    for s in range(0, 300, 16):
        m.insert(np.arange(s, min(s + 16, 300)), x[s : s + 16])
    assert m.audit()["hot"] == 40 and m.stats()["demotions"] == 0 and m.hot.rows == 40
    # the first batches filled hot (of the batch that overflowed, its newest 8); the rest went warm
    assert sorted(m.ids[m.keys_in(HOT)].tolist()) == list(range(32)) + list(range(40, 48))
    m.search(x[200:201], 1)
    m.search(x[200:201], 1)
    m.migrate()
    assert m.location(200) == "hot"  # reaches hot by promotion
    m.close()


def test_newest_first_hot_victims_match_a_full_sort(rng):
    from luma_pl.memory import NewestFirstLRU

    m = TieredMemory(cfg(hot_max_items=40))
    m.insert(np.arange(40), unit(rng, 40))
    for i in (5, 3, 30, 3):
        m.search(m.hot.vectors(np.array([m.key_of[i]])), 1)
    keys = m.keys_in(HOT)
    ref = keys[np.lexsort((keys, m.last_access[keys]))]
    for n in (1, 7, 40, 50):
        np.testing.assert_array_equal(NewestFirstLRU().hot_victims(m, n), ref[:n])
    m.close()


def test_originals_group_commit(tmp_path):
    from luma_pl.memory import OriginalsStore

    x = unit(np.random.default_rng(9), 10, 8)
    store = OriginalsStore(str(tmp_path), 8, sync_rows=4)
    store.append(x[:3])
    np.testing.assert_array_equal(store.get(np.arange(3)), x[:3])  # readable before the commit
    assert OriginalsStore(str(tmp_path), 8).rows == 0  # a crash now would lose the 3 pending rows
    store.append(x[3:5])  # 5 pending >= 4: committed
    assert OriginalsStore(str(tmp_path), 8).rows == 5
    store.append(x[5:6])
    store.close()  # close commits
    reopened = OriginalsStore(str(tmp_path), 8)
    assert reopened.rows == 6
    reopened.verify()
    reopened.close()


@pytest.mark.gpu
@pytest.mark.skipif(not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0), reason="needs faiss GPU + CUDA")
def test_gpu_ivfpq_warm_tier_matches_cpu(rng, tmp_path):
    x, q = unit(rng, 500), unit(rng, 8)
    cpu = TieredMemory(cfg(hot_max_items=0, warm_max_items=500))
    gpu = TieredMemory(cfg(hot_max_items=0, warm_max_items=500, warm_backend="gpu_ivfpq"))
    for m in (cpu, gpu):
        m.insert(np.arange(500), x)
        assert m.warm.trained
    a, b = cpu.search(q, 5, oversample=100, record_hits=False), gpu.search(q, 5, oversample=100, record_hits=False)
    np.testing.assert_array_equal(a.ids, b.ids)  # rescored: exact on both
    gpu.evict([int(b.ids[0, 0])])  # removal refreshes the GPU copy
    assert int(b.ids[0, 0]) not in gpu.search(q, 5, record_hits=False).ids[0]
    save(gpu, str(tmp_path / "g"))
    np.testing.assert_array_equal(load(str(tmp_path / "g")).search(q, 5, record_hits=False).ids,
                                  gpu.search(q, 5, record_hits=False).ids)
    gpu.audit()
    cpu.close()
    gpu.close()


def test_lru_warm_victims_without_a_full_sort_equal_the_full_sort():
    from types import SimpleNamespace

    from luma_pl.memory.policy import BUFFER, WARM, NewestFirstLRU

    rng = np.random.default_rng(3)
    for trial in range(30):
        n_keys = int(rng.integers(20, 4000))
        loc = rng.choice([WARM, BUFFER, 0], n_keys)
        mem = SimpleNamespace(last_access=rng.integers(0, n_keys // 2 + 1, n_keys),
                              hits=rng.integers(0, int(rng.integers(1, 4)), n_keys), locations=loc)
        mem.keys_in = lambda code, loc=loc: np.flatnonzero(loc == code)
        keys = np.concatenate([mem.keys_in(WARM), mem.keys_in(BUFFER)])
        full = keys[np.lexsort((keys, mem.last_access[keys], mem.hits[keys]))]
        for n in (1, 2, len(keys) // 7 + 1, len(keys) // 5, len(keys)):
            np.testing.assert_array_equal(NewestFirstLRU().warm_victims(mem, n), full[:n], err_msg=f"{trial} {n}")


def test_pq_floor_bounds_every_unreturned_item_and_tightens_the_closing_term(rng):
    # every list probed (nprobe = nlist), so no warm item is "missed": every item the rescored search
    # did not return has exact score <= max(last returned, pq_floor + zeta_max); the certificate
    # built on that bound certifies at least what the 2 zeta_max rule did
    import torch

    from luma_pl.telemetry.safe_at_k import certify_search

    m = TieredMemory(cfg(hot_max_items=20, nprobe=4, nlist=4, warm_max_items=7000, warm_max_bytes=1 << 25,
                         pq_m=16, pq_nbits=8))  # fine codes: zeta small enough that answers certify
    x = unit(rng, 6000)
    m.insert(np.arange(6000), x)
    assert m.warm.ivf_count > 0
    q = unit(rng, 40)
    res = m.search(q, 6, oversample=3, rescore=True, record_hits=False)
    assert res.pq_floor is not None and res.pq_floor.shape == (40,) and np.isfinite(res.pq_floor).all()
    # the floor is the PQ score of the last of the k * oversample warm candidates
    ws, _, _ = m.warm.search_ivf(q, 18)
    np.testing.assert_allclose(res.pq_floor, ws[:, -1], rtol=1e-6)
    exact = q @ x.T
    for i in range(40):
        rest = np.setdiff1d(np.arange(6000), res.ids[i])
        bound = max(res.scores[i, -1], res.pq_floor[i] + m.zeta_max)
        assert exact[i, rest].max() <= bound + 1e-5
    eps = torch.full((40,), 1e-3, dtype=torch.float64)
    new = certify_search(res, 5, eps, m, rescored=True)
    old = certify_search(dataclasses.replace(res, pq_floor=None), 5, eps, m, rescored=True)
    assert (new.safe_at_1 >= old.safe_at_1).all() and (new.safe_at_k >= old.safe_at_k).all()
    assert int(new.safe_at_1.sum()) > int(old.safe_at_1.sum())
    # without rescoring the result carries no floor
    assert m.search(q, 6, rescore=False, record_hits=False).pq_floor is None
    m.close()
