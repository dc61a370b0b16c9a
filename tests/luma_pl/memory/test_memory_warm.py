"""Warm-tier generations (luma_pl/memory/warm.py): a drift retraining adds a generation instead of
re-encoding the tier; older codes keep their own quantizers; past ``warm_generations`` the smallest
older one is merged into the newest; search over generations stays exact after rescoring; snapshots
keep every generation; every key is in exactly one generation."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from luma_pl.memory import MemoryConfig, TieredMemory, from_state_dict, load, save, state_dict
from luma_pl.memory.tiers import WARM
from luma_pl.threads import limit_cpu_threads

limit_cpu_threads()

from vector_helpers import topic_stream  # noqa: E402

D = 32


def cfg(**kw) -> MemoryConfig:
    base = dict(dim=D, hot_max_items=0, hot_max_bytes=1 << 20, warm_max_items=20000, warm_max_bytes=1 << 26,
                nlist=8, nprobe=8, pq_m=8, pq_nbits=4, zeta_window=256, retrain_drift_factor=1.3,
                warm_generations=3, oversample=200)
    return MemoryConfig(**{**base, **kw})  # train_size 39 x 16 = 624


def topics(n: int = 6000, seed: int = 0) -> np.ndarray:
    """Unit vectors around 24 topic centres, the stream moving through them (zeta drifts)."""
    return topic_stream(n, D, 24, seed, jitter=2)


def feed(mem: TieredMemory, x: np.ndarray, start: int = 0, stop: int | None = None, batch: int = 128,
         each=None) -> None:
    stop = len(x) if stop is None else stop
    for s in range(start, stop, batch):
        mem.insert(np.arange(s, min(stop, s + batch)), x[s:min(stop, s + batch)])
        if each is not None:
            each(mem)


def generations_hold_every_key_once(mem: TieredMemory) -> None:
    keys = np.concatenate([np.empty(0, np.int64)] + [mem.warm.generation_keys(i) for i in range(len(mem.warm.gens))])
    assert len(keys) == len(np.unique(keys)) == mem.warm.ivf_count
    assert set(keys.tolist()) == set(mem.keys_in(WARM).tolist())
    assert sum(g.count for g in mem.warm.gens) == mem.warm.ivf_count


def test_a_retraining_adds_a_generation_and_leaves_older_codes_alone():
    x = topics()
    mem = TieredMemory(cfg())
    seen: list[tuple[int, np.ndarray, np.ndarray]] = []

    def watch(m):
        if m.counters["retrains"] > (seen[-1][0] if seen else 0):
            warm = m.keys_in(WARM)
            seen.append((m.counters["retrains"], warm, m.zeta[warm].copy()))
    feed(mem, x[:2000], each=watch)
    assert mem.counters["retrains"] >= 2 and mem.stats()["warm_generations"] >= 2
    generations_hold_every_key_once(mem)
    mem.audit()
    # a retraining with room for another generation does not touch the codes already there
    r, warm, zeta = seen[0]
    later = TieredMemory(cfg())
    feed(later, x[:2000])
    np.testing.assert_array_equal(later.zeta[warm][: len(warm) // 2], mem.zeta[warm][: len(warm) // 2])
    later.close()
    mem.close()


def test_past_the_count_the_smallest_older_generation_is_merged():
    x = topics()
    mem = TieredMemory(cfg(warm_generations=2))

    def at_most_two(m):
        generations_hold_every_key_once(m)
        assert len(m.warm.gens) <= 2
    feed(mem, x, each=at_most_two)
    st = mem.stats()
    assert st["retrains"] >= 3 and st["warm_merges"] >= 1 and st["warm_generations"] <= 2
    mem.audit()
    # zeta of merged items is their error under the newest generation's codes
    newest = mem.warm.gens[-1]
    keys = newest.keys()
    xs = mem.originals.get(keys)
    rec = newest.index.sa_decode(newest.index.sa_encode(xs))
    np.testing.assert_allclose(mem.zeta[keys], np.linalg.norm(xs - rec, axis=1), rtol=1e-5, atol=1e-6)
    # and reconstruct() uses each key's own generation
    np.testing.assert_allclose(mem.warm.reconstruct(keys, xs), rec, rtol=1e-5, atol=1e-6)
    mem.close()


def test_search_over_generations_is_exact_after_rescoring_and_removal_works():
    x = topics()
    mem = TieredMemory(cfg())
    feed(mem, x[:4000])
    assert len(mem.warm.gens) >= 2
    q = topics(20, seed=9)
    keys = mem.keys_in(WARM)
    ref = faiss.IndexIDMap(faiss.IndexFlatIP(D))
    ref.add_with_ids(mem.originals.get(keys), mem.ids[keys])
    _, want = ref.search(q, 10)
    got = mem.search(q, 10, record_hits=False)
    np.testing.assert_array_equal(got.ids, want)
    # evicting every item of the oldest generation drops it; the others keep serving
    oldest = mem.warm.generation_keys(0)
    n_gens = len(mem.warm.gens)
    mem.evict(mem.ids[oldest])
    assert len(mem.warm.gens) == n_gens - 1
    generations_hold_every_key_once(mem)
    mem.audit()
    mem.close()


@pytest.mark.parametrize("via_state_dict", [False, True])
def test_snapshots_keep_every_generation(tmp_path, via_state_dict):
    x = topics()
    mem = TieredMemory(cfg())
    feed(mem, x[:3000])
    assert len(mem.warm.gens) >= 2
    back = from_state_dict(state_dict(mem)) if via_state_dict else (save(mem, str(tmp_path / "s")),
                                                                   load(str(tmp_path / "s")))[1]
    assert len(back.warm.gens) == len(mem.warm.gens) and back.warm.merges == mem.warm.merges
    generations_hold_every_key_once(back)
    q = topics(10, seed=3)
    a, b = mem.search(q, 10, record_hits=False), back.search(q, 10, record_hits=False)
    np.testing.assert_array_equal(a.ids, b.ids)
    # both go on identically
    feed(mem, x, 3000, 4000)
    feed(back, x, 3000, 4000)
    np.testing.assert_array_equal(mem.zeta[: mem.num_keys], back.zeta[: back.num_keys])
    assert len(back.warm.gens) == len(mem.warm.gens)
    back.close()
    mem.close()


def test_warm_generations_is_validated():
    with pytest.raises(ValueError, match="warm_generations"):
        MemoryConfig(warm_generations=0).validate()


def test_a_background_retraining_counts_its_copies_against_the_warm_budget():
    x = topics()
    mem = TieredMemory(cfg(retrain_in_background=True, retrain_lag_inserts=4))
    seen = []

    def watch(m):
        if m.retrain_at >= 0:
            seen.append(m.warm.worker_bytes)
            assert m.warm.worker_bytes >= len(m.retrain_keys) * D * 4
            assert m.warm.nbytes() <= m.cfg.warm_max_bytes
        else:
            assert m.warm.worker_bytes == 0
    feed(mem, x[:3000], each=watch)
    assert seen and mem.counters["retrains"] >= 1
    mem.audit()
    mem.close()


def test_a_tampered_generation_table_is_refused_with_the_reason():
    x = topics()
    mem = TieredMemory(cfg())
    feed(mem, x[:3000])
    state = state_dict(mem)
    table = state["arrays"]["warm_generations"]
    assert len(table) >= 2
    for bad in (table + 1, np.r_[table[:-1], -table[-1]], table[:1]):
        hostile = {"arrays": {**state["arrays"], "warm_generations": bad}, "meta": state["meta"]}
        with pytest.raises(ValueError, match="generation table"):
            from_state_dict(hostile)
    mem.close()
