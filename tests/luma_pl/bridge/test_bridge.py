"""Streaming Procrustes: functional core and StreamingProcrustes against batch references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from luma_pl.bridge import StreamingProcrustes
from luma_pl.bridge import functional as F
from luma_pl.configuration import ConfigError
from luma_pl.threads import limit_cpu_threads

limit_cpu_threads()


def _pairs(n, d_s, d_c, seed=0, noise=0.1, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, d_s, generator=g, dtype=torch.float64)
    Q = torch.linalg.qr(torch.randn(max(d_c, d_s), max(d_c, d_s), generator=g, dtype=torch.float64))[0][:d_c, :d_s]
    c = s @ Q.T + noise * torch.randn(n, d_c, generator=g, dtype=torch.float64) + offset
    return s, c


def _stream(bridge, s, c, batch):
    for i in range(0, s.shape[0], batch):
        bridge.fit_step(s[i : i + batch], c[i : i + batch])


def test_lam1_equals_scipy_orthogonal_procrustes():
    s, c = _pairs(300, 16, 16, seed=1)
    br = StreamingProcrustes(d_s=16, d_c=16, refresh_every=0)
    _stream(br, s, c, 37)
    W = br.refresh().numpy()
    # scipy: R = argmin ||A R - B||_F, A = S (N, d_s), B = C (N, d_c); rows c_i^T ~ s_i^T W^T, so R = W^T
    R, _ = scipy.linalg.orthogonal_procrustes(s.numpy(), c.numpy())
    assert np.abs(W - R.T).max() < 1e-10
    assert br.pairs_seen == 300


@pytest.mark.parametrize("d_s,d_c", [(12, 20), (20, 12)])
def test_semi_orthogonal_matches_numpy_svd(d_s, d_c):
    s, c = _pairs(200, d_s, d_c, seed=2)
    M, count, _ = F.accumulate(torch.zeros(d_c, d_s, dtype=torch.float64), 0.0, c, s)
    W = F.solve(M)
    U, _, Vt = np.linalg.svd(c.numpy().T @ s.numpy(), full_matrices=False)
    assert np.abs(W.numpy() - U @ Vt).max() < 1e-10
    eye = W.T @ W if d_c >= d_s else W @ W.T
    assert torch.allclose(eye, torch.eye(min(d_s, d_c), dtype=torch.float64), atol=1e-12)
    assert float(count) == 200


def test_proper_rotation_flips_smallest_direction():
    # a reflection target: the unconstrained solution has det -1
    s, _ = _pairs(100, 5, 5, seed=3)
    R = torch.diag(torch.tensor([1.0, 1, 1, 1, -1], dtype=torch.float64))
    c = s @ R.T
    M = c.T @ s
    W_free = F.solve(M)
    assert float(torch.linalg.det(W_free)) < 0
    W = F.solve(M, proper_rotation=True)
    assert float(torch.linalg.det(W)) == pytest.approx(1.0, abs=1e-10)
    assert torch.allclose(W @ W.T, torch.eye(5, dtype=torch.float64), atol=1e-12)
    # best rotation: trace objective beats any other rotation we try
    best = float((W * M).sum())
    for seed in range(20):
        Q = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]
        if float(torch.linalg.det(Q)) < 0:
            Q[:, 0] = -Q[:, 0]
        assert float((Q * M).sum()) <= best + 1e-9
    with pytest.raises(ValueError, match="proper_rotation"):
        F.solve(torch.ones(3, 4, dtype=torch.float64), proper_rotation=True)


def test_forgetting_equals_explicit_weighted_batch():
    lam, d_s, d_c, batch = 0.9, 8, 10, 13
    s, c = _pairs(130, d_s, d_c, seed=4, offset=0.5)
    br = StreamingProcrustes(d_s=d_s, d_c=d_c, lam=lam, refresh_every=0, center=True, scale=True)
    _stream(br, s, c, batch)
    br.refresh()
    nb = 130 // batch
    w = torch.tensor([lam ** (nb - 1 - i // batch) for i in range(130)], dtype=torch.float64)  # (N,)
    mu_c = (w[:, None] * c).sum(0) / w.sum()
    mu_s = (w[:, None] * s).sum(0) / w.sum()
    C = ((c - mu_c) * w[:, None]).T @ (s - mu_s)  # weighted centred cross-covariance (d_c, d_s)
    U, _, Vt = torch.linalg.svd(C, full_matrices=False)
    W = U @ Vt
    rho = (W * C).sum() / (w * ((s - mu_s) ** 2).sum(1)).sum()
    assert (br.W - W).abs().max() < 1e-10
    assert (br.A - rho * W).abs().max() < 1e-10
    assert (br.b - (mu_c - rho * W @ mu_s)).abs().max() < 1e-10
    # the query-time map is exactly the fitted affine map, normalised
    q = br(s[:5].float())
    ref = torch.nn.functional.normalize((s[:5] @ (rho * W).T + mu_c - rho * W @ mu_s), dim=-1).float()
    assert torch.allclose(q, ref, atol=1e-6)


def test_centring_recorded_and_survives_state_dict():
    s, c = _pairs(100, 6, 6, seed=5, offset=3.0)
    br = StreamingProcrustes(d_s=6, d_c=6, refresh_every=0, center=True)
    _stream(br, s, c, 10)
    br.refresh()
    assert torch.allclose(br.b, c.mean(0) - br.W @ s.mean(0), atol=1e-10)
    other = StreamingProcrustes(d_s=6, d_c=6)  # default config: center=False
    other.load_state_dict(br.state_dict())
    assert other.config.center is True
    x = torch.randn(4, 6)
    assert torch.equal(other(x), br(x))
    # uncentred fit of the same pairs gives a different map: the offsets matter
    plain = StreamingProcrustes(d_s=6, d_c=6, refresh_every=0)
    _stream(plain, s, c, 10)
    plain.refresh()
    assert not torch.allclose(plain(x), br(x), atol=1e-3)


def test_schedule_epsilon_and_reference():
    s, c = _pairs(400, 8, 8, seed=6, noise=1.0)
    br = StreamingProcrustes(d_s=8, d_c=8, refresh_every=100)
    assert br.epsilon() == float("inf") and br.drift_from_reference() == float("inf")
    Ws = []
    for i in range(0, 400, 50):
        if br.fit_step(s[i : i + 50], c[i : i + 50]):
            Ws.append(br.W.clone())
    assert int(br.refreshes) == 4 and len(Ws) == 4
    assert br.epsilon() == pytest.approx(float(torch.linalg.matrix_norm(Ws[-1] - Ws[-2], ord=2)), abs=1e-12)
    assert br.drift_from_reference() == pytest.approx(float(torch.linalg.matrix_norm(Ws[-1] - Ws[0], ord=2)), abs=1e-12)
    assert br.epsilon() > 0
    rep = br.drift("interval")
    assert rep.certificate_applies and rep.value == br.epsilon()


def test_epsilon_equals_spectral_norm_of_known_perturbation():
    W = torch.linalg.qr(torch.randn(7, 7, dtype=torch.float64))[0]
    u, v = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    delta = 0.3 * torch.outer(u / u.norm(), v / v.norm()) + 0.1 * torch.outer(v / v.norm(), u / u.norm())
    expected = float(np.linalg.norm(delta.numpy(), 2))
    assert float(F.drift(W + delta, W)) == pytest.approx(expected, rel=1e-12)
    # and through the stateful bridge: install W then W+delta as two refreshes' maps
    br = StreamingProcrustes(d_s=7, d_c=7, refresh_every=0)
    br.fit_step(torch.randn(3, 7), torch.randn(3, 7))
    br.refresh()
    br.A.copy_(W)
    br.refresh()
    br.A_prev.copy_(W)
    br.A.copy_(W + delta)
    assert br.epsilon() == pytest.approx(expected, rel=1e-12)


def test_errors_name_argument_value_and_fix():
    with pytest.raises(ConfigError, match=r"lam=1\.5.*\(0, 1\]"):
        StreamingProcrustes(d_s=4, d_c=4, lam=1.5)
    with pytest.raises(ConfigError, match="unknown key"):
        StreamingProcrustes(d_s=4, d_c=4, lamda=0.5)
    br = StreamingProcrustes(d_s=4, d_c=5)
    with pytest.raises(ValueError, match="d_c=5"):
        br.fit_step(torch.randn(3, 4), torch.randn(3, 4))
    bad = torch.randn(3, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        br.fit_step(bad, torch.randn(3, 5))
    with pytest.raises(RuntimeError, match="refresh"):
        br(torch.randn(2, 4))
    with pytest.raises(ValueError, match="no anchor pairs"):
        br.refresh()
    with pytest.raises(ValueError, match=r"lam=0"):
        F.accumulate(torch.zeros(5, 4, dtype=torch.float64), 0, torch.randn(2, 5), torch.randn(2, 4), lam=0)


def test_empty_batch_is_noop_and_state_dict_is_plain():
    br = StreamingProcrustes(d_s=4, d_c=4, refresh_every=0)
    s, c = _pairs(20, 4, 4, seed=7)
    br.fit_step(s, c)
    before = {k: v.clone() for k, v in br.state_dict().items() if torch.is_tensor(v)}
    br.fit_step(torch.zeros(0, 4), torch.zeros(0, 4))
    after = br.state_dict()
    for k, v in before.items():
        if k != "steps":
            assert torch.equal(v, after[k]), k
    for v in after.values():
        assert torch.is_tensor(v) or isinstance(v, dict)
