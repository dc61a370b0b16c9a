"""CSLS: the penalty against brute force, and the 3ε bound its certificate rests on."""

from __future__ import annotations

import numpy as np

from luma_pl.bridge.hubness import CSLS_EPSILON_FACTOR, csls_penalty, csls_scores


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_penalty_and_scores_equal_brute_force():
    rng = np.random.default_rng(0)
    items, anchors, q = _unit(rng.standard_normal((30, 5))), _unit(rng.standard_normal((40, 5))), _unit(
        rng.standard_normal((7, 5)))
    r = csls_penalty(items, anchors, k=4, chunk=8)
    want = [np.mean(sorted(items[i] @ anchors.T)[-4:]) for i in range(30)]
    np.testing.assert_allclose(r, want, atol=1e-6)
    np.testing.assert_allclose(csls_scores(q, items, r), 2 * q @ items.T - r[None, :], atol=1e-5)


def test_a_bridge_change_of_eps_moves_every_csls_score_by_at_most_3_eps():
    """Random maps W and W' = W + Δ with ||Δ||_2 = ε (so every bridged unit vector of a unit source
    moves by at most ~ε before renormalisation); the CSLS scores move by at most 3 * (the largest
    observed move of a bridged vector)."""
    rng = np.random.default_rng(1)
    d_s, d_c = 6, 9
    src_q, src_a, items = _unit(rng.standard_normal((20, d_s))), _unit(rng.standard_normal((50, d_s))), _unit(
        rng.standard_normal((25, d_c)))
    W, _ = np.linalg.qr(rng.standard_normal((d_c, d_s)))
    for trial in range(20):
        delta = rng.standard_normal((d_c, d_s))
        Wp = W + 0.05 * delta / np.linalg.norm(delta, 2)
        bq, bq2 = _unit(src_q @ W.T), _unit(src_q @ Wp.T)
        ba, ba2 = _unit(src_a @ W.T), _unit(src_a @ Wp.T)
        eps = max(np.linalg.norm(bq - bq2, axis=1).max(), np.linalg.norm(ba - ba2, axis=1).max())
        s1 = csls_scores(bq, items, csls_penalty(items, ba, k=5))
        s2 = csls_scores(bq2, items, csls_penalty(items, ba2, k=5))
        assert np.abs(s1 - s2).max() <= CSLS_EPSILON_FACTOR * eps + 1e-6, trial
