"""Learned bridges: loss, temperature clamp, drift certificates, training sanity."""

from __future__ import annotations

import math

import pytest
import torch

from luma_pl.bridge.learned import LearnedBridge, mlp_drift_bound
from luma_pl.configuration import ConfigError


def _perturb(model, scale, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def _observed_sup(model, n=20000, seed=0):
    """max over random unit a of ||f_t(a) - f_ref(a)||, with f_ref rebuilt from the snapshot."""
    ref = LearnedBridge(model.config)
    ref.net.load_state_dict({k: getattr(model, "ref_" + k.replace(".", "_")) for k in ref.net.state_dict()})
    a = torch.nn.functional.normalize(torch.randn(n, model.config.d_s, generator=torch.Generator().manual_seed(seed)), dim=-1)
    with torch.no_grad():
        return float((model.raw(a) - ref.raw(a)).norm(dim=-1).max()), ref


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_mlp_bound_covers_observed_sup(activation):
    torch.manual_seed(0)
    model = LearnedBridge(kind="mlp", d_s=8, d_c=10, hidden=32, activation=activation)
    _perturb(model, 0.3, 1)  # the residual branch is non-zero before the snapshot
    model.set_reference()
    assert model.drift().value == 0.0
    _perturb(model, 0.05, 2)
    rep = model.drift()
    assert rep.certificate_applies and rep.method == "lipschitz_bound"
    sup, ref = _observed_sup(model)
    # also push a few inputs uphill on the sphere: an adversary, not just random draws
    a = torch.nn.functional.normalize(torch.randn(64, 8), dim=-1).requires_grad_(True)
    for _ in range(100):
        gap = (model.raw(a) - ref.raw(a)).norm(dim=-1).sum()
        (g,) = torch.autograd.grad(gap, a)
        a = torch.nn.functional.normalize(a.detach() + 0.05 * g, dim=-1).requires_grad_(True)
    with torch.no_grad():
        sup = max(sup, float((model.raw(a) - ref.raw(a)).norm(dim=-1).max()))
    assert sup > 0
    assert rep.value >= sup
    assert rep.value < 50 * sup  # a bound, not a useless huge constant


def test_mlp_bound_is_exact_for_residual_path_only():
    torch.manual_seed(1)
    model = LearnedBridge(kind="mlp", d_s=5, d_c=5, hidden=7)
    model.set_reference()
    delta = torch.outer(torch.tensor([1.0, 0, 0, 0, 0]), torch.tensor([0.0, 0.6, 0.8, 0, 0])) * 0.25
    with torch.no_grad():
        model.net.proj.weight.add_(delta)
    assert model.drift().value == pytest.approx(0.25, rel=1e-6)
    cur = {k: v for k, v in model.net.state_dict().items()}
    assert mlp_drift_bound(cur, cur) == 0.0


def test_gelu_mlp_says_certificate_does_not_apply():
    model = LearnedBridge(kind="mlp", d_s=4, d_c=4, hidden=8, activation="gelu")
    model.set_reference()
    rep = model.drift()
    assert rep.value is None and rep.certificate_applies is False


@pytest.mark.parametrize("kind", ["linear", "orthogonal"])
def test_linear_drift_is_spectral_norm_of_change(kind):
    torch.manual_seed(2)
    model = LearnedBridge(kind=kind, d_s=6, d_c=8)
    assert model.drift().value == math.inf  # no reference yet: no bound, not a made-up number
    model.set_reference()
    W0 = model.net.weight.detach().clone()
    s, c = torch.randn(32, 6), torch.randn(32, 8)
    for _ in range(5):
        model.fit_step(s, c)
    W1 = model.net.weight.detach()
    expected = float(torch.linalg.matrix_norm((W1 - W0).double(), ord=2))
    assert expected > 0
    assert model.drift().value == pytest.approx(expected, rel=1e-6)
    if kind == "orthogonal":
        assert torch.allclose(W1.T @ W1, torch.eye(6), atol=1e-5)


def test_infonce_matches_hand_computation_and_temperature_clamps():
    torch.manual_seed(3)
    model = LearnedBridge(kind="linear", d_s=4, d_c=4, mse_weight=0.25)
    s, c = torch.randn(6, 4), torch.randn(6, 4)
    loss, parts = model.loss(s, c)
    q = torch.nn.functional.normalize(s @ model.net.weight.T, dim=-1)
    k = torch.nn.functional.normalize(c, dim=-1)
    logits = (1 / 0.07) * q @ k.T
    t = torch.arange(6)
    ce = 0.5 * (torch.nn.functional.cross_entropy(logits, t) + torch.nn.functional.cross_entropy(logits.T, t))
    mse = ((q - k) ** 2).sum(1).mean()
    assert float(loss.detach()) == pytest.approx(float(ce + 0.25 * mse), rel=1e-5)
    with torch.no_grad():
        model.log_scale.fill_(10.0)
    assert float(model.logit_scale()) == pytest.approx(100.0, rel=1e-6)
    empty, _ = model.loss(torch.zeros(0, 4), torch.zeros(0, 4))
    empty.backward()
    assert float(empty) == 0.0 and model.net.weight.grad is not None


def test_training_aligns_a_rotation():
    torch.manual_seed(4)
    R = torch.linalg.qr(torch.randn(8, 8))[0]
    model = LearnedBridge(kind="orthogonal", d_s=8, d_c=8, lr=0.05)
    # the parametrisation moves within one connected component of O(n): pick R on the same side
    if float(torch.linalg.det(R) * torch.linalg.det(model.net.weight.detach())) < 0:
        R[:, 0] = -R[:, 0]
    for _step in range(150):
        s = torch.randn(64, 8)
        model.fit_step(s, s @ R.T)
    s = torch.nn.functional.normalize(torch.randn(200, 8), dim=-1)
    cos = (model(s) * (s @ R.T)).sum(1)
    assert float(cos.mean()) > 0.95


def test_state_dict_round_trip_and_errors():
    model = LearnedBridge(kind="mlp", d_s=4, d_c=6, hidden=5)
    model.set_reference()
    other = LearnedBridge(kind="mlp", d_s=4, d_c=6, hidden=5)
    other.load_state_dict(model.state_dict())
    x = torch.randn(3, 4)
    assert torch.equal(other(x), model(x)) and int(other.has_ref) == 1
    with pytest.raises(ConfigError, match="kind='conv'"):
        LearnedBridge(kind="conv")
    with pytest.raises(ValueError, match=r"expects \(N, 4\)"):
        model(torch.randn(2, 5))


# ------------------------------------------------------------------ Safe@k for learned bridges
def _trained(kind: str, activation: str = "relu", steps: int = 5, seed: int = 0, lr: float = 5e-2) -> LearnedBridge:
    torch.manual_seed(seed)
    b = LearnedBridge(kind=kind, d_s=8, d_c=12, hidden=16, activation=activation, lr=lr, refresh_every=5)
    s, c = torch.randn(64, 8), torch.randn(64, 12)
    b.mark_interval()  # the interval starts at the initial weights
    for _ in range(steps):
        b.fit_step(s, c)
    return b


@pytest.mark.parametrize("kind", ["linear", "orthogonal", "mlp"])
def test_interval_epsilon_is_the_certified_change_since_the_last_mark(kind):
    b = LearnedBridge(kind=kind, d_s=8, d_c=12, hidden=16, activation="relu")
    assert math.isinf(b.epsilon()) and int(b.refreshes) == 0
    before = {k: v.detach().clone() for k, v in b._weights().items()}
    b.mark_interval()  # nothing moved yet
    assert b.epsilon() == 0.0 and int(b.refreshes) == 1
    b = _trained(kind)
    after = {k: v.detach().clone() for k, v in b._weights().items()}
    prev = {k: getattr(b, "prev_" + k.replace(".", "_")).clone() for k in after}
    eps = b.mark_interval()
    if kind == "mlp":
        assert eps == pytest.approx(mlp_drift_bound(after, prev), rel=1e-12)
    else:
        assert eps == pytest.approx(torch.linalg.matrix_norm((after["weight"] - prev["weight"]).double(), 2).item(),
                                    rel=1e-9)
    assert eps > 0 and int(b.refreshes) == 2 and b.drift("interval").value == eps
    assert before  # the snapshot of the first bridge was taken before it moved
    gelu = _trained("mlp", activation="gelu")
    assert math.isinf(gelu.mark_interval()) and gelu.drift("interval").certificate_applies is False


def test_old_learned_checkpoint_without_interval_buffers_still_loads():
    b = _trained("mlp")
    state = {k: v for k, v in b.state_dict().items()
             if not (k.startswith("prev_") or k in ("refreshes", "eps_interval"))}
    fresh = LearnedBridge(kind="mlp", d_s=8, d_c=12, hidden=16, activation="relu")
    fresh.load_state_dict(state)  # strict: the missing buffers are filled, not reported
    assert int(fresh.refreshes) == 0 and math.isinf(fresh.epsilon())
    assert fresh.mark_interval() == 0.0  # the new interval starts at the loaded weights


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_certified_learned_answers_never_flip_under_the_allowed_drift(kind):
    """Brute force: exact items, the learned bridge's own ε, worst-case rank-1 weight changes of norm
    ε (at 3ε the same adversary flips certified answers: it is not a toothless one). A certified
    top-1 that changes is a violation; there must be none, and some answers must be certified."""
    from luma_pl.telemetry import functional as TF
    from luma_pl.telemetry.safe_at_k import bridge_queries, choose_epsilon, query_epsilon

    b = _trained(kind, steps=1, lr=2e-3)
    eps = b.mark_interval()
    g = torch.Generator().manual_seed(1)
    X = torch.nn.functional.normalize(torch.randn(200, 12, generator=g, dtype=torch.float64), dim=1)
    a = torch.nn.functional.normalize(torch.randn(300, 8, generator=g), dim=1)
    q, a_norm, u_norm = bridge_queries(b, a)
    eps_q = query_epsilon(choose_epsilon(b, "interval"), a_norm, u_norm)
    scores = q.double() @ X.T
    top, order = scores.sort(dim=1, descending=True)
    cert = TF.certify(top[:, :21], torch.zeros(300, 21, dtype=torch.float64), 0.0, eps_q, 10,
                      vectors=X[order[:, :21]], vectors_exact=True)
    certified = cert.safe_at_1
    assert 0 < int(certified.sum()) < 300
    flips = {}
    for factor in (1.0, 3.0):
        violations = 0
        for trial in range(20):
            pert = LearnedBridge(b.config)
            pert.load_state_dict(b.state_dict())
            with torch.no_grad():
                # rank 1, norm factor * eps, pushing a runner-up j over the winner i; on the MLP it goes
                # into the linear path (proj), where the certified bound is attained exactly
                qi = int(trial % 300)
                i, j = order[qi, 0], order[qi, 1 + trial % 5]
                w = (X[j] - X[i]) / (X[j] - X[i]).norm()
                delta = factor * eps * torch.outer(w, a[qi].double() / a[qi].double().norm())
                (pert.net.proj.weight if kind == "mlp" else pert.net.weight).add_(delta.float())
                assert pert._bound(pert._weights(), b._weights()) <= factor * eps * (1 + 1e-6)
            new_top = (pert(a).double() @ X.T).argmax(dim=1)
            violations += int((certified & (new_top != order[:, 0])).sum())
        flips[factor] = violations
    assert flips[1.0] == 0 and flips[3.0] > 0
