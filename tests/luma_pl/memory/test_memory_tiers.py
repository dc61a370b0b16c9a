"""Unit tests of the hot tier, the warm tier and the originals store against exact faiss search."""

import json
import os

import numpy as np
import pytest

from luma_pl.memory import HotTier, MemoryConfig, OriginalsStore, WarmTier
from luma_pl.threads import limit_cpu_threads

limit_cpu_threads()

from vector_helpers import exact, unit  # noqa: E402


def test_hot_k_larger_than_items_pads():
    hot = HotTier(8, "hnsw", m=4)
    hot.add(np.array([7, 9]), unit(np.random.default_rng(2), 2, 8))
    s, i = hot.search(unit(np.random.default_rng(3), 1, 8), 5)
    assert i.shape == (1, 2) and sorted(i[0].tolist()) == [7, 9]  # kk = min(k, live items)


def small_warm_cfg(**kw):
    base = dict(dim=16, hot_max_items=0, warm_max_items=5000, warm_max_bytes=1 << 24, nlist=4, nprobe=4,
                pq_m=4, pq_nbits=4, train_points_per_centroid=20, zeta_window=64)
    return MemoryConfig(**(base | kw))


def test_warm_buffer_exact_then_trains_and_zeta_is_reconstruction_error():
    rng = np.random.default_rng(4)
    cfg = small_warm_cfg()
    warm = WarmTier(cfg)
    assert warm.train_size == 20 * 16
    x, q = unit(rng, 400, 16), unit(rng, 10, 16)
    zeta = warm.add(np.arange(300), x[:300])
    assert (zeta == 0).all() and not warm.trained
    s, i = warm.search_buffer(q, 5)
    d_ref, i_ref = exact(x[:300], np.arange(300), q, 5)
    np.testing.assert_array_equal(i, i_ref)
    z = warm.train(np.arange(400), x)
    assert warm.trained and warm.ivf_count == 400 and warm.index.nprobe == 4
    assert warm.index.pq.cp.niter == cfg.pq_train_iterations == 10  # not faiss's 25: training stalls ingest
    codes = warm.index.sa_encode(x)
    np.testing.assert_allclose(z, np.linalg.norm(x - warm.index.sa_decode(codes), axis=1), rtol=1e-5)
    # PQ scores are within zeta of the exact ones (|<q, x - x_hat>| <= ||q|| zeta)
    s, i, _ = warm.search_ivf(q, 5)
    exact_s = np.einsum("qd,qkd->qk", q, x[i])
    assert (np.abs(s - exact_s) <= z[i] + 1e-5).all()
    warm.remove(np.arange(0, 400, 2), np.zeros(200, bool))
    assert warm.ivf_count == 200 and warm.index.ntotal == 200
    _, i, _ = warm.search_ivf(q, 50)
    assert not np.isin(i, np.arange(0, 400, 2)).any()


def test_warm_needs_retrain_when_zeta_drifts():
    rng = np.random.default_rng(5)
    cfg = small_warm_cfg(pq_nbits=6, train_points_per_centroid=10)
    warm = WarmTier(cfg)
    # train on a low-dimensional subspace, then add vectors from the full space: PQ error jumps
    base = np.zeros((640, 16), np.float32)
    base[:, :4] = rng.standard_normal((640, 4))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    warm.train(np.arange(640), base)
    assert not warm.needs_retrain()
    warm.add(np.arange(1000, 1064), unit(rng, 64, 16))
    assert warm.needs_retrain()


def test_config_rejects_bad_values_with_names():
    with pytest.raises(ValueError, match="pq_m"):
        MemoryConfig(dim=10, pq_m=3).validate()
    with pytest.raises(ValueError, match="hot_max_bytes"):
        MemoryConfig(dim=512, hot_max_bytes=100).validate()
    with pytest.raises(ValueError, match="nlist"):
        MemoryConfig(dim=8, pq_m=2, warm_max_items=10, nlist=50).validate()
    with pytest.raises(ValueError, match="unknown key"):
        MemoryConfig.from_dict({"dim": 8, "nprobe_typo": 3})
    with pytest.raises(ValueError, match="nprobe"):
        MemoryConfig.from_dict({"dim": 8, "pq_m": 2, "nprobe": -1})
    cfg = MemoryConfig(dim=512, warm_max_items=1_000_000, warm_max_bytes=1 << 40)
    assert cfg.resolved_nlist() == 4000  # ~4 sqrt(N)
    assert cfg.resolved_nprobe() == 16 and MemoryConfig(nprobe=7).resolved_nprobe() == 7
    assert MemoryConfig(nprobe=0, warm_max_items=1_000_000, warm_max_bytes=1 << 40).resolved_nprobe() == 4000 // 64 + 1
    # oversample scales with the warm size (measured: 10 suffices at 100k, ~60 needed at 1M), capped
    assert [cfg.resolved_oversample(n) for n in (0, 90_000, 900_000, 10**8)] == [10, 10, 60, 100]
    assert MemoryConfig(oversample=3).resolved_oversample(10**6) == 3


def test_originals_append_read_and_ignore_uncommitted_tail(tmp_path):
    rng = np.random.default_rng(6)
    store = OriginalsStore(str(tmp_path), 8)
    x = unit(rng, 10, 8)
    assert store.append(x[:6]).tolist() == list(range(6))
    assert store.append(x[6:]).tolist() == list(range(6, 10))
    np.testing.assert_array_equal(store.get(np.array([9, 0])), x[[9, 0]])
    store.close()
    # a crash after writing rows but before committing the header: garbage tail + partial row
    with open(tmp_path / "originals.f32", "ab") as f:
        f.write(b"\x01" * (8 * 4 * 3 + 5))
    store = OriginalsStore(str(tmp_path), 8)
    assert store.rows == 10
    store.verify()
    store.append(x[:2])  # overwrites the uncommitted tail
    np.testing.assert_array_equal(store.get(np.array([10, 11])), x[:2])
    store.close()
    # a torn header write leaves the old header (atomic rename): a stale .tmp is ignored
    (tmp_path / "originals.json.tmp").write_text("{garbage")
    store = OriginalsStore(str(tmp_path), 8)
    assert store.rows == 12
    store.close()
    # corruption of committed bytes is caught
    with open(tmp_path / "originals.f32", "r+b") as f:
        f.seek(4)
        f.write(b"\x00\x00\x80\x7f")
    store = OriginalsStore(str(tmp_path), 8)
    with pytest.raises(ValueError, match="checksum"):
        store.verify()
    store.close()
    with pytest.raises(ValueError, match="dim=8"):
        OriginalsStore(str(tmp_path), 16)
    head = json.loads((tmp_path / "originals.json").read_text())
    os.truncate(tmp_path / "originals.f32", head["rows"] * 32 - 1)
    with pytest.raises(ValueError, match="truncated"):
        OriginalsStore(str(tmp_path), 8)
