"""Certified radii (``functional.certify``'s radius_at_1 / radius_at_k / zeta_radius_*): the closed
form is exact. Against the certificate itself on random candidate lists, exact and approximate,
complete and not: Safe holds at every ε just below the radius and fails just above it; raising every
ζ by just less than the item-error radius keeps it certified (and, with exact vectors, just more
breaks it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from luma_pl.telemetry import functional as F


def case(rng, Q=64, C=12, d=16, approximate=False, complete=False, spread=0.05):
    x = rng.standard_normal((Q, C, d))
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    q = rng.standard_normal((Q, d))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    s = np.einsum("qcd,qd->qc", x, q)
    s = s * spread + np.linspace(0.9, 0.2, C)[None, :]  # sorted-ish, small gaps
    s = -np.sort(-s, axis=1)
    z = rng.uniform(0, 0.003, (Q, C)) if approximate else np.zeros((Q, C))
    zm = 0.002 if approximate else 0.0
    valid = np.ones((Q, C), bool)
    if complete:
        valid[:, C - 3:] = False
        s[:, C - 3:] = -np.inf
    return dict(scores=torch.tensor(s), zeta=torch.tensor(z), zeta_max=zm, vectors=torch.tensor(x),
                vectors_exact=not approximate, valid=torch.tensor(valid), k=4, tol=1e-9)


@pytest.mark.parametrize("approximate", [False, True])
@pytest.mark.parametrize("complete", [False, True])
def test_radius_is_exactly_where_the_certificate_stops(approximate, complete):
    rng = np.random.default_rng(7 + approximate + 2 * complete)
    checked = 0
    for _ in range(20):
        c = case(rng, approximate=approximate, complete=complete)
        base = F.certify(**c, epsilon=0.0)
        for name, safe in (("radius_at_1", "safe_at_1"), ("radius_at_k", "safe_at_k")):
            r = getattr(base, name)
            assert bool((r >= 0).all())
            fin = torch.isfinite(r) & (r > 0)
            below = F.certify(**c, epsilon=torch.where(fin, r * (1 - 1e-7), 0.0))
            above = F.certify(**c, epsilon=torch.where(fin, r * (1 + 1e-7), 1.0))
            assert bool(getattr(below, safe)[fin].all()), name
            assert not bool(getattr(above, safe)[fin].any()), name
            # r = 0: not certified even without drift
            assert not bool(getattr(base, safe)[r == 0].any())
            checked += int(fin.sum())
    assert checked > 500


@pytest.mark.parametrize("approximate", [False, True])
def test_zeta_radius_keeps_the_certificate_under_larger_item_errors(approximate):
    rng = np.random.default_rng(3)
    for _ in range(10):
        c = case(rng, approximate=approximate, spread=0.2)
        eps = 0.01
        cert = F.certify(**c, epsilon=eps)
        for name, safe in (("zeta_radius_at_1", "safe_at_1"), ("zeta_radius_at_k", "safe_at_k")):
            r = getattr(cert, name)
            pos = r > 0
            for factor, expect in ((1 - 1e-6, True), (1 + 1e-6, False)):
                delta = (r * factor)[:, None]
                grown = dict(c, zeta=c["zeta"] + delta, zeta_max=torch.as_tensor(c["zeta_max"]) + delta[:, 0])
                again = getattr(F.certify(**grown, epsilon=eps), safe)
                if expect:
                    assert bool(again[pos].all()), name
                elif not approximate:  # with distances from x̂ the radius is a lower bound
                    assert not bool(again[pos].any()), name


def test_radius_matches_safe_at_the_current_epsilon():
    rng = np.random.default_rng(11)
    c = case(rng, Q=256, approximate=True)
    for eps in (0.0, 1e-4, 1e-3, 1e-2):
        cert = F.certify(**c, epsilon=eps)
        assert torch.equal(cert.safe_at_1, eps < cert.radius_at_1)
        assert torch.equal(cert.safe_at_k, eps < cert.radius_at_k)
