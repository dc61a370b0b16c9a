"""Unit tests of the Safe@k core against a plain loop, the SafeAtK metric, audit and probes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from luma_pl.telemetry import SafeAtK, certify, normalised_epsilon
from luma_pl.telemetry.functional import pair_distance_bound


def _loop(s, z, zm, eps, k, X, R, complete):
    """Safe@1 / Safe@k by the textbook rule, one pair at a time."""
    n = len(s)

    def ok(i, j):
        d = min(np.linalg.norm(X[i] - X[j]) + z[i] + z[j], 2 * R)
        return s[i] - s[j] > eps * d + z[i] + z[j]

    def closing(i):
        return complete or s[i] - s[-1] > 2 * R * eps + z[i] + zm

    safe1 = all(ok(0, j) for j in range(1, n)) and closing(0)
    safek = all(ok(i, j) for i in range(k) for j in range(k, n)) and all(closing(i) for i in range(k))
    return safe1, safek


def test_certify_matches_loop():
    rng = np.random.default_rng(0)
    Q, C, d, k = 200, 8, 16, 3
    X = rng.normal(size=(Q, C, d))
    X /= np.linalg.norm(X, axis=2, keepdims=True)
    s = -np.sort(-rng.normal(size=(Q, C)) * 0.3, axis=1)
    z = rng.random((Q, C)) * 0.02 * (rng.random((Q, C)) < 0.5)
    eps = rng.random(Q) * 0.05
    cert = certify(torch.tensor(s), torch.tensor(z), 0.02, torch.tensor(eps), k, vectors=torch.tensor(X),
                   vectors_exact=False, item_norm=1.0)
    for i in range(Q):
        want = _loop(s[i], z[i], 0.02, eps[i], k, X[i], 1.0, complete=False)
        assert (bool(cert.safe_at_1[i]), bool(cert.safe_at_k[i])) == want
    assert bool((cert.crude_safe_at_1 <= cert.safe_at_1).all()) and bool((cert.crude_safe_at_k <= cert.safe_at_k).all())
    assert 0 < int(cert.safe_at_1.sum()) < Q


def test_padding_complete_list_and_errors():
    s = torch.tensor([[0.9, 0.2, -math.inf, -math.inf]])
    cert = certify(s, None, 0.5, 0.1, 2)  # complete list (2 valid < 4): no closing term
    assert bool(cert.safe_at_1[0]) and bool(cert.safe_at_k[0])
    with pytest.raises(ValueError, match="sorted"):
        certify(torch.tensor([[0.1, 0.9]]), None, 0.0, 0.0, 1)
    with pytest.raises(ValueError, match="epsilon"):
        certify(s, None, 0.0, -1.0, 1)
    inf_cert = certify(torch.tensor([[0.9, 0.1, 0.0]]), None, 0.0, math.inf, 1)
    assert not bool(inf_cert.safe_at_1[0])  # unknown drift certifies nothing


def test_normalised_epsilon_affine_and_linear():
    a = torch.tensor([2.0, 0.5])
    u = torch.tensor([1.0, 1.0])
    assert normalised_epsilon(0.1, a, u).tolist() == pytest.approx([0.2, 0.05])
    assert normalised_epsilon(0.1, a, u, affine=True).tolist() == pytest.approx([0.2, 0.1])  # max(|a|, 1)


def test_pair_distance_bound():
    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    d = pair_distance_bound(v, torch.tensor([[0.1, 0.2]]), vectors_exact=False)
    assert float(d[0, 0, 1]) == pytest.approx(math.sqrt(2) + 0.3)


def test_safe_at_k_metric_merges_sums():
    s = torch.tensor([[0.9, 0.5, 0.1], [0.5, 0.49, 0.1]])
    cert = certify(s, None, 0.0, 0.01, 1)
    m1, m2, both = SafeAtK(1), SafeAtK(1), SafeAtK(1)
    m1.update(cert._replace(**{f: getattr(cert, f)[:1] for f in ("safe_at_1", "safe_at_k", "crude_safe_at_1", "crude_safe_at_k", "epsilon", "zeta_1")}))
    m2.update(cert._replace(**{f: getattr(cert, f)[1:] for f in ("safe_at_1", "safe_at_k", "crude_safe_at_1", "crude_safe_at_k", "epsilon", "zeta_1")}))
    both.update(cert)
    merged = float((m1.safe_at_1 + m2.safe_at_1) / (m1.count + m2.count))
    assert merged == pytest.approx(float(both.compute()["safe_at_1"]))


def test_audit_and_probes_on_memory(tmp_path):
    from luma_pl.bridge import ProcrustesConfig, StreamingProcrustes
    from luma_pl.memory import MemoryConfig, TieredMemory
    from luma_pl.telemetry import OnlineAudit, probe_recall

    rng = np.random.default_rng(1)
    d_s, d_c, n = 8, 12, 300
    W = np.linalg.qr(rng.normal(size=(d_c, d_s)))[0]
    S = rng.normal(size=(n, d_s)).astype(np.float32)
    S /= np.linalg.norm(S, axis=1, keepdims=True)
    Cn = S @ W.T + 0.05 * rng.normal(size=(n, d_c))
    Cn = (Cn / np.linalg.norm(Cn, axis=1, keepdims=True)).astype(np.float32)
    mem = TieredMemory(MemoryConfig(dim=d_c, hot_max_items=1000, hot_backend="flat", pq_m=4))
    mem.insert(np.arange(n), Cn)
    bridge = StreamingProcrustes(ProcrustesConfig(d_s=d_s, d_c=d_c, refresh_every=50))
    audit = OnlineAudit(S[:64], k=3, candidates=6)
    reports = []
    for lo in range(0, n, 25):
        if bridge.fit_step(torch.from_numpy(S[lo:lo + 25]), torch.from_numpy(Cn[lo:lo + 25])):
            r = audit.observe(bridge, mem)
            if r is not None:
                reports.append(r)
    assert reports and audit.totals["violations_within_epsilon"] == 0
    q = bridge(torch.from_numpy(S[:64])).numpy()
    pr = probe_recall(mem, q, 3)
    assert pr.recall == pytest.approx(1.0)  # flat hot tier is exact
