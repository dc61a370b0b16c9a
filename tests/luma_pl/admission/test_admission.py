"""Admission pipeline: prefilter, clustering, heavy-hitter guarantees (vs datasketches), adaptive,
memory bridge accounting, prototypes mode, baselines, configs."""

from __future__ import annotations

import collections

import datasketches as ds
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from luma_pl.admission import (
    AdaptiveConfig,
    AdmissionConfig,
    AdmissionPipeline,
    ClusterConfig,
    CounterConfig,
    HeavyHitterCounter,
    OnlineClusterer,
    Prefilter,
    PrefilterConfig,
    PrototypeIndex,
    adapt,
    countmin_dims,
    pca_basis,
    random_basis,
    relevance,
    space_saving_merge,
)
from luma_pl.admission.baselines import FifoWindow, FullRebuild, HeapFilter, KeepAll, Reservoir
from luma_pl.admission.policy import HeavyHitterPolicy
from luma_pl.configuration import ConfigError
from luma_pl.memory import MemoryConfig, TieredMemory


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def topic_stream(n_topics=6, per=80, d=32, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centers = unit(rng, n_topics, d)
    x = np.concatenate([c + spread * rng.standard_normal((per, d)) for c in centers]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------- prefilter
def test_bases_are_orthonormal_and_pca_oriented():
    rng = np.random.default_rng(0)
    b = random_basis(16, 5, seed=3)
    np.testing.assert_allclose(b @ b.T, np.eye(5), atol=1e-5)
    w = unit(rng, 200, 16) + 2.0
    p = pca_basis(w, 4)
    np.testing.assert_allclose(p @ p.T, np.eye(4), atol=1e-5)
    assert (p @ w.mean(0) >= 0).all()
    x = unit(rng, 7, 16)
    ref = np.array([[xi @ v / np.linalg.norm(xi) for v in b] for xi in x]).mean(1)
    np.testing.assert_allclose(relevance(x, b), ref, atol=1e-5)


def test_warm_started_pca_matches_exact_svd_on_a_sliding_window():
    # drifting stream, 96-d, windows of 200 sliding by 50: the warm start (2 passes from the last
    # basis) must capture the top-5 energy of the exact SVD, as the cold 4-pass start does
    rng = np.random.default_rng(1)
    centers = unit(rng, 8, 96)
    topic = np.minimum(np.arange(1200) // 150 + rng.integers(0, 2, 1200), 7)
    x = centers[topic] + 0.05 * rng.standard_normal((1200, 96)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    prev = None
    for s in range(200, 1200, 50):
        w = x[s - 200:s]
        sv = np.linalg.svd(w.astype(np.float64), compute_uv=False)
        warm = pca_basis(w, 5, init=prev)
        np.testing.assert_allclose(warm @ warm.T, np.eye(5), atol=1e-5)
        assert ((w @ warm.T) ** 2).sum() >= (1 - 3e-3) * (sv[:5] ** 2).sum()  # cold 4-pass: same tolerance
        assert (warm @ w.mean(0) >= 0).all()
        prev = warm


@pytest.mark.parametrize("basis", ["fixed", "random", "adaptive", "none"])
def test_prefilter_counts_every_drop(basis):
    x = topic_stream()
    pf = Prefilter(PrefilterConfig(basis=basis, threshold_mode="quantile", alpha=0.2, window=64, interval=32), 32)
    kept = sum(int(pf.step(x[i:i + 25]).sum()) for i in range(0, len(x), 25))
    assert pf.seen == len(x) and kept + pf.dropped == len(x)
    assert (pf.dropped == 0) == (basis == "none")


def test_adaptive_basis_follows_the_stream_fixed_does_not():
    x = topic_stream(n_topics=2, per=300, spread=0.1)
    cfg = dict(threshold_mode="absolute", alpha=-1.0, window=100, interval=50, n_vectors=2)
    ad, fx = Prefilter(PrefilterConfig(basis="adaptive", **cfg), 32), Prefilter(PrefilterConfig(basis="fixed", **cfg), 32)
    for i in range(0, 600, 50):
        ad.step(x[i:i + 50])
        fx.step(x[i:i + 50])
    second = x[300:].mean(0)
    assert relevance(second[None], ad.basis)[0] > relevance(second[None], fx.basis)[0]
    assert ad.refreshes > 5 and fx.refreshes == 1


def test_prefilter_state_round_trip():
    x = topic_stream()
    cfg = PrefilterConfig(basis="adaptive", threshold_mode="quantile", alpha=0.3, window=64, interval=16)
    a = Prefilter(cfg, 32)
    for i in range(0, 240, 40):
        a.step(x[i:i + 40])
    b = Prefilter(cfg, 32)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.step(x[240:300]), b.step(x[240:300]))
    assert a.dropped == b.dropped


# ---------------------------------------------------------------------------------- clustering
def test_batched_update_equals_sequential_eta_updates():
    rng = np.random.default_rng(1)
    x = unit(rng, 50, 8)
    cl = OnlineClusterer(ClusterConfig(m=5, seed=0), 8)
    cl.assign_update(x[:10])
    mu, cnt = cl.centroids.copy(), cl.counts.copy()
    labels = cl.assign_update(x[10:])
    seq = mu.astype(np.float64)
    n = cnt.copy()
    for xi, j in zip(x[10:], labels, strict=True):
        eta = 1.0 / (n[j] + 1)
        seq[j] = (1 - eta) * seq[j] + eta * xi
        n[j] += 1
    np.testing.assert_allclose(cl.centroids, seq, atol=1e-5)
    np.testing.assert_array_equal(cl.counts, n)


def test_clustering_recovers_topics_and_seeds_small_batches():
    x = topic_stream(n_topics=4, per=100, spread=0.05)
    cl = OnlineClusterer(ClusterConfig(m=4, seed=0), 32)
    perm = np.random.default_rng(0).permutation(len(x))
    labels = np.concatenate([cl.assign_update(x[perm[i:i + 50]]) for i in range(0, 400, 50)])
    truth = perm // 100
    for t in range(4):  # every topic lands in one cluster
        assert len(set(labels[truth == t].tolist())) == 1
    small = OnlineClusterer(ClusterConfig(m=10), 32)
    small.assign_update(x[:3])
    assert small.active == 3
    small.assign_update(x[3:50])
    assert small.active == 10


# ---------------------------------------------------------------------------------- heavy hitters
streams = st.lists(st.integers(0, 30), min_size=1, max_size=400)


@settings(max_examples=60, deadline=None)
@given(stream=streams, capacity=st.integers(1, 12))
def test_space_saving_guarantee(stream, capacity):
    c = HeavyHitterCounter(CounterConfig(policy="space_saving", capacity=capacity))
    c.update(np.array(stream))
    true = collections.Counter(stream)
    n = len(stream)
    labs, cnt, err = c.summary()
    assert cnt.sum() == n  # Space-Saving counts always sum to N
    for lab, cn, e in zip(labs.tolist(), cnt.tolist(), err.tolist(), strict=True):
        assert true[lab] <= cn <= true[lab] + n / capacity
        assert cn - e <= true[lab]
    for lab, tc in true.items():
        if tc > n / capacity:
            assert lab in c


@settings(max_examples=40, deadline=None)
@given(stream=streams, capacity=st.integers(1, 12), split=st.floats(0, 1))
def test_space_saving_merge_guarantee(stream, capacity, split):
    cut = int(split * len(stream))
    parts = [stream[:cut], stream[cut:]]
    sums = []
    for p in parts:
        c = HeavyHitterCounter(CounterConfig(policy="space_saving", capacity=capacity))
        c.update(np.array(p, np.int64))
        sums.append(c.summary())
    labs, cnt, err = space_saving_merge(sums, capacity)
    true = collections.Counter(stream)
    n = len(stream)
    assert len(labs) <= capacity
    for lab, cn in zip(labs.tolist(), cnt.tolist(), strict=True):
        assert true[lab] <= cn <= true[lab] + n / capacity
    for lab, tc in true.items():
        if tc > n / capacity:
            assert lab in set(labs.tolist())


@settings(max_examples=40, deadline=None)
@given(stream=st.lists(st.integers(0, 10_000), min_size=1, max_size=300), eps=st.sampled_from([0.05, 0.1, 0.2]))
def test_count_min_never_underestimates(stream, eps):
    c = HeavyHitterCounter(CounterConfig(policy="count_min", capacity=5, cm_epsilon=eps, cm_delta=0.1))
    c.update(np.array(stream))
    true = collections.Counter(stream)
    labs = np.array(sorted(true))
    assert (c.estimate(labs) >= np.array([true[lab] for lab in labs])).all()


def test_count_min_error_bound_holds_with_high_probability():
    rng = np.random.default_rng(0)
    stream = rng.zipf(1.3, 20_000) % 5000
    eps, delta = 0.01, 0.05
    c = HeavyHitterCounter(CounterConfig(policy="count_min", capacity=50, cm_epsilon=eps, cm_delta=delta, seed=7))
    c.update(stream)
    true = collections.Counter(stream.tolist())
    labs = np.array(sorted(true))
    excess = c.estimate(labs) - np.array([true[lab] for lab in labs])
    assert (excess >= 0).all()
    assert (excess > eps * len(stream)).mean() <= delta
    assert (c.cm_width, c.cm_depth) == countmin_dims(eps, delta)


def test_space_saving_agrees_with_datasketches():
    rng = np.random.default_rng(3)
    stream = (rng.zipf(1.5, 30_000) % 2000).astype(np.int64)
    b = 64
    ours = HeavyHitterCounter(CounterConfig(policy="space_saving", capacity=b))
    ours.update(stream)
    sk = ds.frequent_strings_sketch(7)  # lg_max_k=7: 128 slots, 96 usable (load factor 0.75)
    ski = ds.frequent_items_sketch(7)
    for v in stream.tolist():
        sk.update(str(v))
        ski.update(v)
    n = len(stream)
    true = collections.Counter(stream.tolist())
    threshold = n / b  # the heavy hitters both must report
    heavy_true = {lab for lab, c in true.items() if c > threshold}
    ds_heavy = {int(s) for s, est, lo, hi in sk.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_NEGATIVES)
                if hi > threshold}
    labs, cnt, _ = ours.summary()
    ours_heavy = {lab for lab, c in zip(labs.tolist(), cnt.tolist(), strict=True) if c > threshold}
    assert heavy_true <= ds_heavy and heavy_true <= ours_heavy
    # every reported label: the truth lies within each sketch's bounds
    for lab in ours_heavy | heavy_true:
        lo, hi = sk.get_lower_bound(str(lab)), sk.get_upper_bound(str(lab))
        assert lo <= true[lab] <= hi
        assert ski.get_lower_bound(lab) <= true[lab] <= ski.get_upper_bound(lab)
        assert true[lab] <= ours.count_of([lab])[0] <= true[lab] + n / b
    # the confidently heavy labels (lower bound above the threshold) agree exactly
    sure = {int(s) for s, est, lo, hi in sk.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_POSITIVES, int(threshold))}
    assert sure <= ours_heavy and sure <= heavy_true


@pytest.mark.parametrize("policy", ["random", "min"])
def test_gated_policies_respect_u(policy):
    stream = np.arange(2000) % 500  # every arrival after the first B is a new label
    c0 = HeavyHitterCounter(CounterConfig(policy=policy, capacity=10, admit_prob=0.0))
    c0.update(stream)
    assert c0.stats["admitted"] == 10 and c0.stats["evicted"] == 0
    c1 = HeavyHitterCounter(CounterConfig(policy=policy, capacity=10, admit_prob=0.2))
    c1.update(stream)
    rate = c1.stats["evicted"] / (len(stream) - 10)
    assert 0.15 < rate < 0.25


def test_counter_state_round_trip_continues_identically():
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 50, 600)
    for policy in ("random", "min", "space_saving", "count_min"):
        cfg = CounterConfig(policy=policy, capacity=8, admit_prob=0.3)
        a = HeavyHitterCounter(cfg)
        a.update(stream[:300])
        b = HeavyHitterCounter(cfg)
        b.load_state_dict(a.state_dict())
        ha, _ = a.update(stream[300:])
        hb, _ = b.update(stream[300:])
        np.testing.assert_array_equal(ha, hb)
        assert a.stats == b.stats


def test_adaptive_opens_and_decays():
    cfg = AdaptiveConfig(enabled=True, novelty_threshold=0.2, u_max=0.5, capacity_boost=0.5, decay=0.5)
    assert adapt(0.05, 100, 0.9, 0.05, 100, cfg) == (0.5, 150)
    u, b = adapt(0.5, 150, 0.0, 0.05, 100, cfg)
    assert abs(u - 0.275) < 1e-9 and b == 125
    pipe = AdmissionPipeline(AdmissionConfig(prefilter=PrefilterConfig(basis="none"), cluster=ClusterConfig(m=40),
                                             counter=CounterConfig(policy="min", capacity=10),
                                             adaptive=AdaptiveConfig(enabled=True, window=32)), 32)
    pipe.step(topic_stream(n_topics=8, per=10, spread=0.01))  # many new labels: opens up
    assert pipe.counter.capacity > 10 and pipe.counter.admit_prob > 0.05
    same = np.repeat(topic_stream(n_topics=1, per=1, spread=0.0), 64, axis=0)
    for _ in range(40):
        pipe.step(same)
    assert pipe.counter.capacity == 10 and pipe.counter.admit_prob < 0.06
    assert len(pipe.counter) <= 10


# ---------------------------------------------------------------------------------- memory bridge
def small_memory(d=32, hot=30, warm=60):
    return TieredMemory(MemoryConfig(dim=d, hot_max_items=hot, hot_max_bytes=1 << 20, warm_max_items=warm,
                                     warm_max_bytes=1 << 21, nlist=2, pq_m=4, pq_nbits=4, hnsw_m=8))


@pytest.mark.parametrize("policy", ["random", "min", "space_saving", "count_min"])
@pytest.mark.parametrize("victims", ["quota", "label_count"])
def test_items_mode_counts_everything(policy, victims):
    x = topic_stream()
    pipe = AdmissionPipeline(AdmissionConfig(
        prefilter=PrefilterConfig(basis="adaptive", threshold_mode="quantile", alpha=0.1, window=64, interval=32),
        cluster=ClusterConfig(m=12), counter=CounterConfig(policy=policy, capacity=4, admit_prob=0.3),
        victims=victims), 32)
    mem = small_memory()
    for i in range(0, len(x), 32):
        d = pipe.ingest_items(mem, np.arange(i, min(len(x), i + 32)), x[i:i + 32])
        assert (d.labels[~d.keep] == -1).all()
        counts = mem.audit()
        assert pipe.stats["dropped"] + mem.counters["inserted"] == pipe.stats["arrivals"]
        assert sum(counts.values()) == mem.counters["inserted"]
        assert counts["evicted"] == mem.counters["evictions"]
    assert mem.counters["evictions"] > 0 and pipe.stats["dropped"] > 0
    pol = pipe.policy
    for tier, budget in ((0, mem.cfg.hot_max_items), (None, mem.cfg.warm_max_items)):
        victims_ = pol.hot_victims(mem, 10**6) if tier == 0 else pol.warm_victims(mem, 10**6)
        labels = mem.labels[victims_]
        tracked = pipe.counter.tracked(labels).astype(int)
        cnt = pipe.counter.count_of(labels)
        if victims == "label_count":  # untracked labels first, then the smallest counts
            assert (np.diff(tracked) >= 0).all()
            same = np.diff(tracked) == 0
            assert (np.diff(cnt)[same] >= 0).all()
            continue
        # quota: brute-force reference of each key's excess over its label's count-proportional share
        share = {lab: (c if t else 0) for lab, t, c in zip(labels.tolist(), tracked.tolist(), cnt.tolist(), strict=True)}
        total = max(sum(share.values()), 1)
        excess = []
        for key, lab in zip(victims_.tolist(), labels.tolist(), strict=True):
            mates = [k for k, m in zip(victims_.tolist(), labels.tolist(), strict=True) if m == lab]
            newer = sorted(mates, key=lambda k: (-mem.last_access[k], -k))
            excess.append(newer.index(key) + 1 - budget * share[lab] / total)
        if tier == 0:  # hot: the largest excess first
            assert (np.diff(excess) <= 1e-9).all()
        else:  # warm: excess first, then fewest hits
            ex, hits = np.array(excess), mem.hits[victims_]
            assert (np.diff(ex) <= 1e-9).all()
            tie = np.abs(np.diff(ex)) <= 1e-9
            assert (np.diff(hits)[tie] >= 0).all()
    mem.close()


def test_quota_victims_keep_a_frequency_weighted_recent_sample():
    # two tracked labels with counts 3:1 and an untracked one, 8 items each, budget 8: the quota
    # ranking evicts the untracked label, then label 0 keeps its 6 newest and label 1 its 2 newest
    counter = HeavyHitterCounter(CounterConfig(policy="space_saving", capacity=2))
    counter.update(np.array([0, 0, 0, 1]))
    mem = small_memory()
    pol = HeavyHitterPolicy(counter)
    ids = np.arange(24)
    labels = np.repeat([0, 1, 2], 8)
    mem.policy = pol
    mem.insert(ids, unit(np.random.default_rng(0), 24, mem.cfg.dim), hot=np.zeros(24, bool), labels=labels)
    mem.last_access[mem._lookup(ids)] = np.arange(24)  # later id = more recently accessed
    keys = mem._lookup(ids)
    excess = pol._quota_excess(mem, keys, 8)
    keep = keys[np.argsort(-excess, kind="stable")][16:]
    assert sorted(mem.ids[keep].tolist()) == [2, 3, 4, 5, 6, 7, 14, 15]
    mem.close()


def test_pipeline_state_round_trip():
    x = topic_stream()
    cfg = AdmissionConfig(prefilter=PrefilterConfig(basis="adaptive", threshold_mode="quantile", alpha=0.1, window=64),
                          cluster=ClusterConfig(m=12), counter=CounterConfig(policy="space_saving", capacity=4),
                          adaptive=AdaptiveConfig(enabled=True, window=32))
    a = AdmissionPipeline(cfg, 32)
    a.step(x[:200])
    b = AdmissionPipeline(cfg, 32)
    b.load_state_dict(a.state_dict())
    da, db = a.step(x[200:]), b.step(x[200:])
    assert da.checksum() == db.checksum() and a.stats == b.stats
    empty = AdmissionPipeline(cfg, 32)
    empty.load_state_dict({})  # an old checkpoint without state: defaults
    assert empty.stats["arrivals"] == 0


def test_prototypes_mode():
    x = topic_stream(n_topics=4, per=100, spread=0.1)
    pipe = AdmissionPipeline(AdmissionConfig(mode="prototypes", prefilter=PrefilterConfig(basis="none"),
                                             cluster=ClusterConfig(m=8), counter=CounterConfig(capacity=6),
                                             upsert_interval=50, probe=3), 32)
    mem = TieredMemory(MemoryConfig(dim=32, hot_max_items=20, hot_max_bytes=1 << 20, warm_max_items=0,
                                    hot_backend="flat", pq_m=4))
    idx = PrototypeIndex(pipe, mem)
    for i in range(0, 400, 25):
        idx.ingest(np.arange(i, i + 25), x[i:i + 25])
    assert idx.stats["upserts"] == 8 and len(mem) == len(idx.indexed) <= 6
    s = idx.stats
    assert s["kept"] + s["not_admitted"] == 400
    assert sum(len(v) for v in idx.members.values()) == s["kept"] - s["member_drops"]
    qs = np.arange(0, 400, 7)
    ids, _ = idx.search(x[qs], 5)
    held = {i for v in idx.members.values() for i, _ in v}
    hits = [e in ids[j] for j, e in enumerate(qs.tolist()) if e in held]
    assert len(hits) > 10 and np.mean(hits) > 0.9
    idx.close()
    mem.close()


# ---------------------------------------------------------------------------------- baselines
def test_baselines():
    x = topic_stream()
    n = len(x)
    ka, fr = KeepAll(32), FullRebuild(32)
    rs, ff, hp = Reservoir(32, 50, seed=1), FifoWindow(32, 50), HeapFilter(32, 50)
    for i in range(0, n, 40):
        for b in (ka, fr, rs, ff, hp):
            b.ingest(np.arange(i, min(n, i + 40)), x[i:i + 40])
    q = x[::5]
    np.testing.assert_array_equal(ka.search(q, 1)[0][:, 0], np.arange(0, n, 5))
    np.testing.assert_array_equal(fr.search(q, 3)[0], ka.search(q, 3)[0])
    assert sorted(ff.ids.tolist()) == list(range(n - 50, n))
    for b in (rs, ff, hp):
        assert len(b) == 50 and b.evictions + getattr(b, "rejected", 0) == n - 50
        ids, _ = b.search(q, 5)
        assert set(ids[ids >= 0].tolist()) <= set(b.ids.tolist())
    # the reservoir is roughly uniform over the stream
    assert 0.25 < (rs.ids < n // 2).mean() < 0.75


def test_invalid_configs_name_the_field():
    with pytest.raises(ConfigError, match="policy"):
        CounterConfig(policy="lru").validate()
    with pytest.raises(ConfigError, match="admit_prob"):
        CounterConfig(admit_prob=2).validate()
    with pytest.raises(ConfigError, match="basis"):
        PrefilterConfig(basis="pca").validate()
    with pytest.raises(ConfigError, match="alpha"):
        PrefilterConfig(threshold_mode="quantile", alpha=1.5).validate()
    with pytest.raises(ConfigError, match="capacity"):
        AdmissionConfig(cluster=ClusterConfig(m=10), counter=CounterConfig(capacity=10)).validate()
    with pytest.raises(ConfigError, match="unknown"):
        AdmissionConfig.from_dict({"mode": "items", "nope": 1})
    cfg = AdmissionConfig.from_dict({"counter": {"policy": "min"}, "prefilter": {"basis": "random"}})
    assert cfg.counter.policy == "min" and cfg.prefilter.basis == "random"


@pytest.mark.parametrize("warm", [False, True])
def test_quota_victims_fast_path_equals_the_full_sort(warm):
    # random tiers (labels, counts, recency with ties, hits): the first n victims chosen without a
    # full sort are exactly the first n of the full quota order
    from types import SimpleNamespace

    rng = np.random.default_rng(7)
    for trial in range(30):
        n_keys, m = int(rng.integers(50, 3000)), int(rng.integers(2, 40))
        counter = HeavyHitterCounter(CounterConfig(policy="space_saving", capacity=int(rng.integers(1, m + 1))))
        counter.update(rng.integers(0, m, 500))
        pol = HeavyHitterPolicy(counter)
        mem = SimpleNamespace(last_access=rng.integers(0, n_keys // 3 + 1, n_keys), hits=rng.integers(0, 3, n_keys),
                              labels=rng.integers(-1, m, n_keys))
        keys = rng.permutation(n_keys)[: int(rng.integers(10, n_keys))]
        budget = int(rng.integers(1, 2 * len(keys)))
        excess = pol._quota_excess(mem, keys, budget)
        la = mem.last_access[keys]
        full = keys[np.lexsort((keys, la, mem.hits[keys], -excess)) if warm else np.lexsort((keys, la, -excess))]
        for n in (1, 3, len(keys) // 10 + 1, len(keys) // 5):
            got = pol._quota_victims(mem, keys, budget, n, warm)
            np.testing.assert_array_equal(got, full[:n], err_msg=f"trial {trial} n {n}")
