"""HitMigration (luma_pl/memory/migration.py), the policy TierMigration schedules: what the stream
asks for goes hot, what it stopped asking for goes warm, budgets hold; and it refuses a memory
that migrates itself (the two rules would fight over the hot tier)."""

from __future__ import annotations

import numpy as np
import pytest

from luma_pl.memory import HOT, MemoryConfig, TieredMemory
from luma_pl.memory.migration import HitMigration

D = 16


def _memory(**kw):
    cfg = dict(dim=D, hot_max_items=20, hot_max_bytes=1 << 20, warm_max_items=600, warm_max_bytes=1 << 22,
               nlist=4, nprobe=4, pq_m=4, pq_nbits=4, train_points_per_centroid=20, hnsw_m=8)
    return TieredMemory(MemoryConfig(**(cfg | kw)))


def _unit(rng, n):
    x = rng.standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_asked_items_are_promoted_and_idle_ones_demoted():
    rng = np.random.default_rng(0)
    m = _memory()
    x = _unit(rng, 300)
    m.insert(np.arange(300), x)  # the first 20 go hot, the rest warm
    hot_before = set(m.ids[m.keys_in(HOT)].tolist())
    asked = np.array([250, 260, 270])  # warm items the stream keeps asking for
    policy = HitMigration(capacity=16, promote_min_count=2, idle_checks=1, max_moves=8)
    for _ in range(3):
        m.search(x[asked], 1, record_hits=True)
        moved = policy.check(m)
    assert all(m.location(int(i)) == "hot" for i in asked)
    assert policy.promotions >= 3 and policy.demotions > 0 and moved["demoted"] <= 8
    assert set(m.ids[m.keys_in(HOT)].tolist()) != hot_before and m.audit()
    state = policy.state_dict()
    again = HitMigration(capacity=16, promote_min_count=2, idle_checks=1, max_moves=8)
    again.load_state_dict(state)
    assert again.state_dict()["checks"] == state["checks"] and np.array_equal(again.hits_seen, policy.hits_seen)


def test_a_memory_that_migrates_itself_is_refused():
    m = _memory(migrate_every_n_searches=3)
    m.insert(np.arange(10), _unit(np.random.default_rng(1), 10))
    with pytest.raises(ValueError, match="migrate_every_n_searches"):
        HitMigration().check(m)


@pytest.mark.parametrize("kw", [dict(capacity=0), dict(max_moves=-1), dict(idle_checks=True)])
def test_bad_settings_name_the_argument(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        HitMigration(**kw)


def test_the_memory_runs_the_same_rule_itself_and_saves_its_state(tmp_path):
    """migrate_every_n_searches > 0: the memory's own HitMigration (built from MemoryConfig) checks
    every n recorded searches, promotes what is asked and demotes what is idle, like the callback's;
    its state survives a snapshot and a state_dict, and loading a snapshot resumes it exactly."""
    from luma_pl.memory import persistence

    rng = np.random.default_rng(3)
    kw = dict(migrate_every_n_searches=2, promote_min_hits=2, migrate_capacity=16, migrate_idle_checks=1,
              migrate_max_moves=8)
    m = _memory(**kw)
    x = _unit(rng, 300)
    m.insert(np.arange(300), x)
    asked = np.array([250, 260, 270])
    for _ in range(6):  # 3 checks of the memory's own policy
        m.search(x[asked], 1, record_hits=True)
    own = m.migration
    assert own.checks == 3 and not own.collective
    assert all(m.location(int(i)) == "hot" for i in asked) and own.promotions >= 3 and own.demotions > 0
    assert m.stats()["auto_migrations"] == own.promotions + own.demotions
    persistence.save(m, str(tmp_path / "snap"))
    saved = persistence.state_dict(m)
    a = own.state_dict()
    for mem in (m,):  # one more check on the original: what the restored ones must repeat
        mem.search(x[[10, 11]], 1, record_hits=True)
        mem.search(x[[10, 11]], 1, record_hits=True)
    hot_after = set(m.ids[m.keys_in(HOT)].tolist())
    for back in (persistence.load(str(tmp_path / "snap"), directory=str(tmp_path / "a")),
                 persistence.from_state_dict(saved, directory=str(tmp_path / "b"))):
        b = back.migration.state_dict()
        assert {k: a[k] for k in ("checks", "promotions", "demotions")} == \
               {k: b[k] for k in ("checks", "promotions", "demotions")}
        for name in ("hits_seen", "last_hit_check"):
            np.testing.assert_array_equal(a[name], b[name])
        for name in ("labels", "counts", "errors"):
            np.testing.assert_array_equal(a["counter"][name], b["counter"][name])
        back.search(x[[10, 11]], 1, record_hits=True)
        back.search(x[[10, 11]], 1, record_hits=True)
        assert back.migration.checks == 4 and set(back.ids[back.keys_in(HOT)].tolist()) == hot_after
        back.close()
