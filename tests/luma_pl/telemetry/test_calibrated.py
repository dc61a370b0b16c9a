"""The calibrated Safe@k mode (luma_pl/telemetry/calibrated.py and the audit's calibrated counts):
the conformal quantile and the binomial interval against scipy / brute force, and the audit on a real
streaming Procrustes bridge over a real memory: while the stream is stationary the calibrated flip
share stays within α and the mode certifies answers the worst case cannot; after a topic jump (the
anchors suddenly follow another map) the realised flips rise above α and the audit says so."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from luma_pl.bridge import ProcrustesConfig, StreamingProcrustes
from luma_pl.memory import MemoryConfig, TieredMemory
from luma_pl.telemetry import OnlineAudit
from luma_pl.telemetry.audit import calibrated_rates
from luma_pl.telemetry.calibrated import DriftCalibration, clopper_pearson, conformal_quantile


def test_conformal_quantile_is_the_ceil_n_plus_1_rank_and_covers_exchangeable_draws():
    v = np.arange(1, 20, dtype=float)  # n = 19
    assert conformal_quantile(v, 0.1) == 18.0  # ceil(20 * 0.9) = 18th smallest
    assert conformal_quantile(v, 0.05) == 19.0
    assert conformal_quantile(v[:10], 0.05) == math.inf  # 11 * 0.95 -> 11 > 10: no finite bound
    with pytest.raises(ValueError, match="alpha"):
        conformal_quantile(v, 0.0)
    rng = np.random.default_rng(0)  # coverage over many exchangeable trials: P(new > bound) <= alpha
    misses = [rng.exponential() > conformal_quantile(rng.exponential(size=99), 0.1) for _ in range(4000)]
    assert np.mean(misses) <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / 4000)


def test_clopper_pearson_matches_scipy_and_covers():
    from scipy.stats import binomtest

    for k, n in ((0, 10), (3, 10), (10, 10), (17, 400)):
        ci = binomtest(k, n).proportion_ci(0.95, method="exact")
        assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert all(math.isnan(x) for x in clopper_pearson(0, 0))


def test_calibration_window_and_state():
    cal = DriftCalibration(alpha=0.2, window=5)
    cal.add([0.1, 0.2, 0.3])
    cal.add([0.4, 0.5, np.inf])  # the oldest drops; an inf drift counts as 1.0
    assert len(cal) == 5 and cal.epsilon() == 1.0
    again = DriftCalibration(alpha=0.2, window=5)
    again.load_state_dict(cal.state_dict())
    assert again.epsilon() == cal.epsilon()
    with pytest.raises(ValueError, match="window"):
        DriftCalibration(window=0)


def rotation(rng, d, angle):
    """An orthogonal map rotating by ``angle`` in d/2 random planes."""
    Q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    R = np.eye(d)
    for i in range(0, d - 1, 2):
        c, s = math.cos(angle), math.sin(angle)
        R[i:i + 2, i:i + 2] = [[c, -s], [s, c]]
    return Q @ R @ Q.T


@pytest.mark.slow
def test_the_audit_flags_a_topic_jump_and_holds_alpha_before_it():
    rng = np.random.default_rng(4)
    d, n_items, alpha = 16, 2000, 0.1
    W1 = np.linalg.qr(rng.normal(size=(d, d)))[0]
    W2 = rotation(rng, d, 1.2) @ W1  # after the jump the anchors follow another map
    items = rng.normal(size=(n_items, d)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    mem = TieredMemory(MemoryConfig(dim=d, hot_max_items=n_items, hot_backend="flat", pq_m=4))
    mem.insert(np.arange(n_items), items)
    probes = rng.normal(size=(256, d)).astype(np.float32)
    bridge = StreamingProcrustes(ProcrustesConfig(d_s=d, d_c=d, lam=0.9, refresh_every=32))
    audit = OnlineAudit(probes, k=5, candidates=10, alpha=alpha, calibration_window=16384)

    def anchors(W, n, noise=0.35):
        s = rng.normal(size=(n, d)).astype(np.float32)
        c = s @ W.T + noise * rng.normal(size=(n, d))
        return torch.from_numpy(s), torch.from_numpy(c.astype(np.float32))

    def run(W, refreshes):
        reports = []
        for _ in range(refreshes):
            if bridge.fit_step(*anchors(W, 32)):
                r = audit.observe(bridge, mem)
                if r is not None:
                    reports.append(r)
        return reports

    run(W1, 80)  # warm-up: the calibration window fills with stationary drifts
    audit.totals = dict.fromkeys(audit.totals, 0)
    run(W1, 120)
    t = dict(audit.totals)
    before = calibrated_rates(t, alpha)
    assert before["calibrated_exceed_share_lo"] <= alpha and before["calibrated_assumption_failed"] == 0.0
    assert t["calibrated_certified"] > t["certified"]  # certifies where the worst case cannot
    assert before["calibrated_flip_rate_at_1"] <= alpha and before["calibrated_flip_rate_at_k"] <= alpha
    assert t["violations_within_epsilon"] == 0
    jump = run(W2, 4)  # the jump: these refreshes move the map far more than any recent one did
    after = calibrated_rates({k: sum(getattr(r, k) for r in jump) for k in audit.totals}, alpha)
    assert after["calibrated_assumption_failed"] == 1.0 and after["calibrated_exceed_share_lo"] > 2 * alpha
    assert after["calibrated_flip_rate_at_k"] > alpha  # the realised flips among calibrated-safe sets
    assert all(r.violations_within_epsilon == 0 for r in jump)  # the worst-case certificate still holds
