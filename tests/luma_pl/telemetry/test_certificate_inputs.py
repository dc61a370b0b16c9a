"""Input validation of the Safe@k certificate functions: a negative or NaN bound would certify
rankings that can flip, so it is refused; empty inputs give a result or a named error (never an
IndexError); valid inputs certify exactly as the rule of luma_pl/telemetry/functional.py says."""

from __future__ import annotations

import math

import pytest
import torch

from luma_pl.telemetry import functional as F
from luma_pl.telemetry.safe_at_k import EpsilonChoice, choose_epsilon

DT = torch.float64


def _case():
    # margin 0.05 < ζ_1 + ζ_2 = 0.1: not safe; with ζ_1 = -0.05 the (wrong) slack would be positive
    scores = torch.tensor([[0.9, 0.85]], dtype=DT)
    return scores, torch.tensor([True])


def test_a_negative_zeta_no_longer_turns_safe_at_1_true():
    scores, complete = _case()
    good = F.certify(scores, torch.tensor([[0.05, 0.05]], dtype=DT), 0.0, 0.0, 1, complete=complete)
    assert not bool(good.safe_at_1[0])
    # the same list with a negative ζ on the top-1 would certify it (0.05 > -0.05 + 0.05): refused
    with pytest.raises(ValueError, match=r"zeta has the value -0.05.*>= 0 and not NaN"):
        F.certify(scores, torch.tensor([[-0.05, 0.05]], dtype=DT), 0.0, 0.0, 1, complete=complete)
    with pytest.raises(ValueError, match=r"zeta_max has the value -1.0"):
        F.certify(scores, None, -1.0, 0.0, 1)
    with pytest.raises(ValueError, match=r"epsilon has the value -0.1"):
        F.certify(scores, None, 0.0, -0.1, 1)


@pytest.mark.parametrize("name", ["zeta", "zeta_max", "epsilon"])
def test_nan_bounds_are_refused(name):
    scores, complete = _case()
    args = {"zeta": torch.tensor([[0.0, 0.0]], dtype=DT), "zeta_max": 0.0, "epsilon": 0.0}
    args[name] = torch.tensor([[math.nan, 0.0]], dtype=DT) if name == "zeta" else math.nan
    with pytest.raises(ValueError, match=rf"{name} has the value nan"):
        F.certify(scores, args["zeta"], args["zeta_max"], args["epsilon"], 1, complete=complete)


def test_inf_epsilon_is_allowed_and_certifies_nothing():
    scores, complete = _case()
    cert = F.certify(scores, None, 0.0, math.inf, 1, complete=complete)
    assert not bool(cert.safe_at_1[0])


def test_normalised_epsilon_refuses_nan_negative_and_nonfinite_norms():
    one = torch.ones(2, dtype=DT)
    with pytest.raises(ValueError, match=r"epsilon has the value nan"):
        F.normalised_epsilon(math.nan, one, one)
    with pytest.raises(ValueError, match=r"epsilon has the value -1.0"):
        F.normalised_epsilon(-1.0, one, one)
    with pytest.raises(ValueError, match=r"a_norm has an entry nan"):
        F.normalised_epsilon(0.1, torch.tensor([1.0, math.nan], dtype=DT), one)
    with pytest.raises(ValueError, match=r"u_norm has an entry inf"):
        F.normalised_epsilon(0.1, one, torch.tensor([math.inf, 1.0], dtype=DT))
    assert torch.equal(F.normalised_epsilon(0.1, one, 2 * one), torch.full((2,), 0.05, dtype=DT))


def test_empty_inputs_give_a_result_or_a_named_error():
    # Q = 0
    cert = F.certify(torch.zeros(0, 5, dtype=DT), None, 0.0, 0.1, 3)
    assert cert.safe_at_1.shape == (0,) and cert.safe_at_k.shape == (0,)
    # C = 0: nothing to certify
    cert = F.certify(torch.zeros(4, 0, dtype=DT), None, 0.0, 0.1, 3)
    assert cert.safe_at_1.shape == (4,) and not bool(cert.safe_at_1.any()) and not bool(cert.safe_at_k.any())
    assert F.pair_distance_bound(torch.zeros(0, 3, 8)).shape == (0, 3, 3)
    assert F.pair_distance_bound(torch.zeros(2, 0, 8)).shape == (2, 0, 0)
    a, b = F.top_changed(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long), 2)
    assert a.shape == b.shape == (0,)
    with pytest.raises(ValueError, match=r"ids_after has shape \(2, 1\); pass \(Q, >= k=2\)"):
        F.top_changed(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"scores has shape \(3,\)"):
        F.certify(torch.zeros(3, dtype=DT), None, 0.0, 0.1, 1)
    with pytest.raises(ValueError, match=r"k=0 must be a positive int"):
        F.certify(torch.zeros(1, 2, dtype=DT), None, 0.0, 0.1, 0)
    with pytest.raises(ValueError, match=r"item_norm=0.0 must be a finite number > 0"):
        F.certify(torch.zeros(1, 2, dtype=DT), None, 0.0, 0.1, 1, item_norm=0.0)


def _brute_safe_at_1(s, z, zm, eps, complete, R, tol):
    """The rule written out pair by pair (no vectors: every distance is capped at 2R)."""
    Q, C = s.shape
    out = []
    for q in range(Q):
        ok = True
        for j in range(1, C):
            ok &= float(s[q, 0] - s[q, j]) - tol > 2 * R * float(eps[q]) + float(z[q, 0] + z[q, j])
        if not bool(complete[q]):
            ok &= float(s[q, 0] - s[q, -1]) - tol > 2 * R * float(eps[q]) + float(z[q, 0]) + float(zm[q])
        out.append(ok)
    return out


def test_valid_inputs_match_the_rule_pair_by_pair():
    g = torch.Generator().manual_seed(0)
    Q, C = 400, 6
    s = torch.sort(torch.rand(Q, C, generator=g, dtype=DT), dim=1, descending=True)[0]
    z = 0.02 * torch.rand(Q, C, generator=g, dtype=DT)
    zm = 0.02 * torch.rand(Q, generator=g, dtype=DT)
    eps = 0.05 * torch.rand(Q, generator=g, dtype=DT)
    complete = torch.rand(Q, generator=g) > 0.5
    cert = F.certify(s, z, zm, eps, 2, complete=complete, item_norm=1.0, tol=1e-6)
    want = _brute_safe_at_1(s, z, zm, eps, complete, 1.0, 1e-6)
    assert cert.safe_at_1.tolist() == want
    assert 0 < sum(want) < Q  # both outcomes are exercised


def test_epsilon_choice_refuses_nan_and_negative():
    with pytest.raises(ValueError, match=r"value=nan"):
        EpsilonChoice(math.nan, "given", False)
    with pytest.raises(ValueError, match=r"value=-1.0"):
        EpsilonChoice(-1.0, "given", False)
    with pytest.raises(ValueError, match=r"source='given' needs value >= 0, not NaN \(got value=nan\)"):
        choose_epsilon(None, "given", math.nan)
    assert choose_epsilon(None, "given", math.inf).value == math.inf

    class Corrupt:
        def epsilon(self):
            return math.nan

    with pytest.raises(ValueError, match=r"epsilon\(\) is nan.*reload the bridge"):
        choose_epsilon(Corrupt(), "interval")
