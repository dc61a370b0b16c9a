"""Property test: random insert / search / promote / demote / evict / migrate / save / load sequences.

After every step: the audit passes (every id in exactly one place, indexes agree with the per-key
arrays), budgets hold, evicted ids stay evicted, and search equals an exact brute-force reference
over the live items. Tiers are exact here: HNSW with efSearch far above the item count, and either
a warm tier that never leaves its exact buffer or a trained IVFPQ whose candidates cover the whole
warm tier (nprobe = nlist, oversample*k >= warm items) and are rescored exactly.
"""

import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from luma_pl.memory import HotWhileRoom, MemoryConfig, TieredMemory, from_state_dict, load, save, state_dict
from luma_pl.threads import limit_cpu_threads

limit_cpu_threads()
D = 8
CONFIGS = {
    # warm_max_items (30) < training size (16*16): the warm tier stays an exact buffer
    "buffer": dict(dim=D, hot_max_items=6, hot_max_bytes=6 * 400, warm_max_items=30, warm_max_bytes=1 << 20,
                   nlist=1, pq_m=2, pq_nbits=4, train_points_per_centroid=16, hnsw_m=4, ef_search=256,
                   tombstone_fraction=0.3),
    # training after 3*16 = 48 warm items; nprobe = nlist and oversample*k >= 80 keeps rescoring exact
    "ivfpq": dict(dim=D, hot_max_items=8, hot_max_bytes=1 << 20, warm_max_items=80, warm_max_bytes=1 << 20,
                  nlist=2, nprobe=2, pq_m=2, pq_nbits=4, train_points_per_centroid=3, hnsw_m=4, ef_search=256,
                  oversample=80, zeta_window=16, retrain_drift_factor=1.2),
}
# the ivfpq memory with a segmented hot tier that seals every 3 rows into graph segments of at most 5
# rows and compacts a segment at 50% tombstones: seals, whole-segment drops and compactions all happen
CONFIGS["segments"] = CONFIGS["ivfpq"] | dict(hot_max_items=12, hot_seal_rows=3, hot_segment_rows=5,
                                              tombstone_fraction=0.5)
# the ivfpq memory again, with streaming admission and automatic migration every 2nd search
CONFIGS["ivfpq_auto_migrate"] = CONFIGS["ivfpq"] | dict(migrate_every_n_searches=2, promote_min_hits=1)


def unit(seed, n):
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class MemoryMachine(RuleBasedStateMachine):
    config_name = "buffer"

    def __init__(self):
        super().__init__()
        self.cfg = MemoryConfig(**CONFIGS[self.config_name])
        self.mem = TieredMemory(self.cfg, policy=HotWhileRoom() if "auto_migrate" in self.config_name else None)
        self.vectors: dict[int, np.ndarray] = {}  # every id ever inserted -> its current vector
        self.evicted: set[int] = set()
        self.next_id = 0
        self.tmp = tempfile.mkdtemp(prefix="luma_sm_")

    def teardown(self):
        self.mem.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def live(self) -> list[int]:
        return [i for i in self.vectors if self.mem.location(i) != "evicted"]

    @rule(n=st.integers(1, 25), seed=st.integers(0, 2**31), tier=st.sampled_from([None, None, "warm", "hot"]))
    def insert(self, n, seed, tier):
        if tier == "hot":
            n = min(n, self.cfg.hot_max_items)
        ids = np.arange(self.next_id, self.next_id + n)
        x = unit(seed * 100_003 + self.next_id, n)  # distinct per id: equal vectors would tie
        self.mem.insert(ids, x, tier=tier)
        self.next_id += n
        self.vectors.update(zip(ids.tolist(), x, strict=True))

    @precondition(lambda self: self.vectors)
    @rule(data=st.data(), seed=st.integers(0, 2**31))
    def upsert(self, data, seed):
        i = data.draw(st.sampled_from(sorted(self.vectors)))
        x = unit(seed * 100_003 + self.next_id + 50_000, 1)
        self.mem.insert([i], x, upsert=True)
        self.vectors[i] = x[0]
        self.evicted.discard(i)

    @rule(seed=st.integers(0, 2**31), k=st.integers(1, 5), nq=st.integers(1, 3))
    def search(self, seed, k, nq):
        q = unit(seed, nq)
        r = self.mem.search(q, k)
        live = self.live()
        if not live:
            assert (r.ids == -1).all()
            return
        ids = np.array(live)
        s = q @ np.stack([self.vectors[i] for i in live]).T
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        kk = min(k, len(live))
        np.testing.assert_allclose(r.scores[:, :kk], np.take_along_axis(s, top, 1)[:, :kk], atol=1e-5)
        # ids may differ only where exact scores tie (improbable with Gaussian vectors)
        assert (r.ids[:, :kk] == ids[top[:, :kk]]).all()
        assert (r.ids[:, kk:] == -1).all() and (r.zeta == 0).all()

    def _pick(self, data, where):
        pool = sorted(i for i in self.vectors if self.mem.location(i) in where)
        return data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique=True)) if pool else []

    @rule(data=st.data())
    def promote(self, data):
        ids = self._pick(data, ("warm", "buffer"))
        if ids:
            self.mem.promote(ids)
            assert all(self.mem.location(i) == "hot" for i in ids)

    @rule(data=st.data())
    def demote(self, data):
        ids = self._pick(data, ("hot",))
        if ids:
            self.mem.demote(ids)
            # a demoted id is warm, or evicted if the warm budget had to make room
            assert all(self.mem.location(i) in ("warm", "buffer", "evicted") for i in ids)

    @rule(data=st.data())
    def evict(self, data):
        ids = self._pick(data, ("hot", "warm", "buffer"))
        if ids:
            self.mem.evict(ids)

    @rule()
    def migrate(self):
        self.mem.migrate()

    @rule(via_state_dict=st.booleans())
    def save_and_load(self, via_state_dict):
        before = self.mem.stats()
        if via_state_dict:
            new = from_state_dict(state_dict(self.mem))
        else:
            save(self.mem, f"{self.tmp}/snap")
            new = load(f"{self.tmp}/snap")
        self.mem.close()
        new.policy = self.mem.policy
        self.mem = new
        assert self.mem.stats() == before

    @invariant()
    def bookkeeping_holds(self):
        counts = self.mem.audit()
        assert sum(counts.values()) == len(self.vectors)
        b = self.mem.bytes_by_tier()
        assert b["hot"] <= self.cfg.hot_max_bytes and b["warm"] <= self.cfg.warm_max_bytes
        assert len(self.mem.hot) <= self.cfg.hot_max_items and len(self.mem.warm) <= self.cfg.warm_max_items
        now_evicted = {i for i in self.vectors if self.mem.location(i) == "evicted"}
        assert self.evicted <= now_evicted, "an evicted id came back without an upsert"
        self.evicted = now_evicted
        assert self.mem.stats()["evictions"] >= len(now_evicted)
        event(f"warm trained: {self.mem.warm.trained}")
        st = self.mem.stats()
        if self.cfg.hot_seal_rows:
            event(f"hot seals > 0: {st['hot_seals'] > 0}; compactions > 0: {st['hot_rebuilds'] > 0}; "
                  f"segment drops > 0: {st['hot_segment_drops'] > 0}")


class IVFPQMachine(MemoryMachine):
    config_name = "ivfpq"


SETTINGS = settings(max_examples=40, stateful_step_count=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
TestBufferMemory = MemoryMachine.TestCase
TestBufferMemory.settings = SETTINGS
TestIVFPQMemory = IVFPQMachine.TestCase
TestIVFPQMemory.settings = SETTINGS


class SegmentsMachine(MemoryMachine):
    config_name = "segments"


TestSegmentedHotMemory = SegmentsMachine.TestCase
TestSegmentedHotMemory.settings = SETTINGS


class AutoMigrateMachine(MemoryMachine):
    config_name = "ivfpq_auto_migrate"


TestAutoMigrateMemory = AutoMigrateMachine.TestCase
TestAutoMigrateMemory.settings = settings(SETTINGS, max_examples=20)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_machine_configs_are_valid(name):
    MemoryConfig.from_dict(CONFIGS[name])
