"""Safe@k certificate: the pure, batched core (docs/design.md section 6).

Every function here is a function of its arguments (no state, no I/O). Inputs are batched over Q
queries, each with C candidates sorted by observed score (best first).

Derivation (why the rule below is a proof, and where each constant comes from)
------------------------------------------------------------------------------
Let ``a`` be the source query, ``f(a) = A a + b`` the bridge's un-normalised map (``b = 0`` when
the bridge is not centred) and ``u = f(a)``; the search runs with the unit query ``q = u / ||u||``
and observes ``ŝ_i = <q, x̂_i>``, where ``x̂_i`` is the stored (PQ-approximated, or exact) vector of
item i and the true item ``x_i`` satisfies ``||x_i - x̂_i|| <= ζ_i`` (ζ_i = 0 for exact scores).

Adversary: any bridge ``f'`` with ``||f'(a) - f(a)|| <= D`` and any true items inside their ζ-balls.
For a linear bridge ``D = ε ||a||`` with ``ε >= ||A' - A||_2``; for the centred (affine) bridge the
bridge reports ``ε >= ||ΔA||_2 + ||Δb||`` (``StreamingProcrustes.epsilon``) and
``||ΔA a + Δb|| <= ||ΔA|| ||a|| + ||Δb|| <= ε max(||a||, 1)`` (triangle inequality), so
``D = ε max(||a||, 1)``: the offset b is accounted for, not assumed away.

The ranking under f' is by ``<f'(a), x>``; a positive rescaling of the query keeps every order, so
normalising ``f'(a)`` changes nothing. For candidates i, j:

    <f'(a), x_i - x_j> = <u, x_i - x_j> + <f'(a) - u, x_i - x_j>
                       >= ||u|| (s_i - s_j) - D ||x_i - x_j||          (Cauchy-Schwarz)
    s_i = <q, x_i> >= ŝ_i - ||q|| ζ_i = ŝ_i - ζ_i                       (||q|| = 1)

so ``<f'(a), x_i - x_j> > 0`` (i stays above j) whenever

    ŝ_i - ŝ_j  >  ε_q ||x_i - x_j|| + ζ_i + ζ_j,      ε_q = D / ||u||.

This is docs/design.md's ``ŝ_i - ŝ_j > ε ||a|| ||x_i - x_j|| + ||q|| (ζ_i + ζ_j)`` divided by ``||u||``:
with un-normalised scores (``q = u``) the ζ term carries ``||u||``; with the unit query used here
the ε term is divided by ``||u||`` instead. ``ε_q`` is what ``normalised_epsilon`` returns. For the
uncentred semi-orthogonal Procrustes bridge with d_c >= d_s (``WᵀW = I``), ``||u|| = ||a||`` and
``ε_q = ε`` exactly; with d_c < d_s or centring ``||u|| != ||a||`` and the division matters.

Both inequalities are tight: a rank-1 ``ΔA = ε w vᵀ`` with ``v = a/||a||``, ``w = (x_j - x_i)/||x_j - x_i||``
attains the first, and ``x_i = x̂_i - ζ_i q'``, ``x_j = x̂_j + ζ_j q'`` (q' the perturbed query
direction) attains the second (tests/luma_pl/telemetry/test_safe_at_k_adversarial.py shows both).

Distances: when the true vectors are given (``vectors_exact=True``) ``||x_i - x_j||`` is used as is;
when only x̂ is known, ``||x_i - x_j|| <= ||x̂_i - x̂_j|| + ζ_i + ζ_j``; and always
``||x_i - x_j|| <= 2 R`` where R bounds the true items' norms (``item_norm``: 1 for unit items;
``TieredMemory`` admits norms within 1e-3 of 1, so its adapter passes ``1 + 1e-3``).

Closing term (items the search did not return). The search returns the C best observed scores, so
every unreturned item y has ``ŝ_y <= ŝ_last`` (the last returned candidate's score) and
``ζ_y <= ζ_max``; with ``||x_i - x_y|| <= 2R`` the pair rule gives

    ŝ_i - ŝ_last  >  2R ε_q + ζ_i + ζ_max.

For unit items (R = 1) this is docs/design.md's ``ŝ_i - ŝ_(k+1) > 2ε + ζ_i + ζ_max`` with the constants of
the pairwise bound; comparing with ``ŝ_last`` (= ``ŝ_(k+1)`` when C = k + 1) is at least as tight,
because candidates k+1..C are checked pairwise with their own distances. When the list is
*complete* (the search returned every live item: fewer valid candidates than C) there is no
unreturned item and no closing term. Items an approximate search missed although they score above
``ŝ_last`` break the premise ``ŝ_y <= ŝ_last``: that gap is outside the certificate and is
measured by recall probes (``probes.py``).

- Safe@1: the pair rule for the top-1 against every other valid candidate, and the closing term.
- Safe@k (the top-k *set*): the pair rule for every i <= k < j among candidates, and the closing
  term for every i <= k. Ask the search for at least k + 1 candidates, or Safe@k cannot hold.
- Crude rule (the seeds'): ``margin > 2 (R ε_q + ζ_c)`` with ``ζ_c`` the *maximum* ζ over the
  candidates and ζ_max (never a mean). It implies the rule above (``||x_i - x_j|| <= 2R``,
  ``ζ_i + ζ_j <= 2 ζ_c``), so it is valid but looser.

Numerics: everything is computed in float64; ``tol`` is an absolute slack subtracted from every
margin, for scores that were computed in float32 (1e-5 covers d <= 4096 unit vectors).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

DTYPE = torch.float64
EPSILON_SOURCES = ("interval", "reference", "frozen", "given")
"""Where ε came from: drift over the last refresh interval, drift from the reference bridge, 0 for
a frozen bridge, or a value passed by the caller."""


class Certificate(NamedTuple):
    """Per-query telemetry (every field (Q,) unless noted). ``slack`` > tol <=> certified."""

    k: int
    margin_top2: torch.Tensor
    """ŝ_1 - ŝ_2 (nan with fewer than 2 valid candidates)."""
    margin_at_k: torch.Tensor
    """ŝ_k - ŝ_(k+1) (nan with fewer than k + 1 valid candidates)."""
    epsilon: torch.Tensor
    """ε_q used, in normalised-score units (see module docstring)."""
    zeta_1: torch.Tensor
    """ζ of the top-1 hit."""
    zeta_max: torch.Tensor
    """ζ bound for unreturned items."""
    slack_at_1: torch.Tensor
    """min over Safe@1's conditions of (lhs - rhs); +inf when nothing needs checking."""
    slack_at_k: torch.Tensor
    """min over Safe@k's conditions of (lhs - rhs)."""
    safe_at_1: torch.Tensor
    safe_at_k: torch.Tensor
    crude_safe_at_1: torch.Tensor
    """The seeds' rule margin_top2 > 2(R ε_q + ζ_c) with ζ_c a maximum."""
    crude_safe_at_k: torch.Tensor
    """margin_at_k > 2(R ε_q + ζ_c)."""
    critical_at_1: torch.Tensor
    """Index j of Safe@1's binding condition; C (= number of candidates) means the closing term."""
    critical_at_k: torch.Tensor
    """(Q, 2) pair (i, j) of Safe@k's binding condition; j = C means the closing term for i."""
    radius_at_1: torch.Tensor
    """Certified radius of the top-1: the largest ε_q (normalised-score units) under which Safe@1
    still holds, ``min_j (ŝ_1 - ŝ_j - ζ_1 - ζ_j - tol) / d_1j`` over the pair conditions and
    ``(ŝ_1 - ŝ_last - ζ_1 - ζ_max - tol) / 2R`` for the closing term, clipped at 0 (+inf when nothing
    needs checking). Safe@1 at the ε used ⇔ ``epsilon < radius_at_1``."""
    radius_at_k: torch.Tensor
    """The same for the top-k set (pairs i <= k < j and the closing term of every i <= k)."""
    zeta_radius_at_1: torch.Tensor
    """Certified item-error radius of the top-1 at the ε used: the largest δ such that Safe@1 still
    holds when every ζ (candidates' and ζ_max) grows by δ: ``slack / 2`` per condition, ``/ (2 + 2ε)``
    for pair distances bounded from x̂ (they grow by 2δ too); clipped at 0."""
    zeta_radius_at_k: torch.Tensor
    """The same for the top-k set."""


def normalised_epsilon(epsilon, a_norm: torch.Tensor, u_norm: torch.Tensor, affine: bool = False) -> torch.Tensor:
    """ε_q = D / ||u|| per query (Q,): the bridge drift bound in the units of scores from the unit query.

    ``epsilon`` scalar or (Q,): the bridge's operator-norm drift bound (for an affine bridge the
    bound ``||ΔA||_2 + ||Δb||``); ``a_norm`` (Q,) ``||a||`` of the source queries; ``u_norm`` (Q,)
    ``||A a + b||``. ``D = ε ||a||`` (linear) or ``ε max(||a||, 1)`` (affine).
    """
    a_norm = torch.as_tensor(a_norm, dtype=DTYPE)
    u_norm = torch.as_tensor(u_norm, dtype=DTYPE)
    eps = _check_bound(epsilon, "epsilon", "use inf when no drift bound is known (nothing is certified)")
    if bool((~torch.isfinite(a_norm) | (a_norm < 0)).any()):
        raise ValueError(f"a_norm has an entry {_first_bad(a_norm, finite=True)}; pass the finite norms ||a|| "
                         "of the source queries (>= 0)")
    if bool((~torch.isfinite(u_norm)).any()):
        raise ValueError(f"u_norm has an entry {_first_bad(u_norm, finite=True)}; pass the finite norms "
                         "||A a + b|| of the bridged queries (a bridge with NaN/inf weights maps nothing)")
    if bool((u_norm <= 0).any()):
        raise ValueError("u_norm has a zero entry: the bridge maps a query to 0 and no order is defined")
    D = eps * (a_norm.clamp_min(1.0) if affine else a_norm)
    return torch.where(eps == 0, torch.zeros_like(D), D / u_norm)


def _first_bad(t: torch.Tensor, finite: bool = False) -> str:
    """The first offending value of ``t`` (NaN, negative, or non-finite when ``finite``) as text."""
    flat = t.reshape(-1)
    bad = torch.isnan(flat) | (flat < 0)
    if finite:
        bad = bad | ~torch.isfinite(flat)
    idx = int(bad.nonzero()[0, 0]) if bool(bad.any()) else 0
    return f"{float(flat[idx])!r}" if flat.numel() else "(none)"


def _check_bound(x, name: str, fix: str) -> torch.Tensor:
    """``x`` as float64, refused unless every entry is >= 0 and not NaN (inf allowed): ε and ζ are
    upper bounds, and a negative or NaN one would certify what is not safe."""
    t = torch.as_tensor(x, dtype=DTYPE)
    if bool((torch.isnan(t) | (t < 0)).any()):
        raise ValueError(f"{name} has the value {_first_bad(t)}; it must be >= 0 and not NaN (a negative or NaN "
                         f"bound would certify rankings that can flip); {fix}")
    return t


def _check_positive(x, name: str) -> float:
    v = float(x)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}={x!r} must be a finite number > 0 (item_norm bounds the items' norms: 1 for "
                         "unit vectors)")
    return v


def _check_tol(tol) -> float:
    v = float(tol)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"tol={tol!r} must be a finite number >= 0 (an absolute slack on scores, e.g. 1e-5 for "
                         "float32 scores)")
    return v


def pair_distance_bound(vectors: torch.Tensor, zeta: torch.Tensor | None = None, vectors_exact: bool = True,
                        item_norm: float = 1.0) -> torch.Tensor:
    """Upper bound on ``||x_i - x_j||`` for every candidate pair: (Q, C, d) -> (Q, C, C) float64.

    ``vectors_exact``: the vectors are the true items; otherwise they are x̂ and ζ_i + ζ_j is added.
    Capped at ``2 * item_norm``. Empty Q or C give an empty (Q, C, C) result.
    """
    item_norm = _check_positive(item_norm, "item_norm")
    vectors = torch.as_tensor(vectors)
    if vectors.ndim != 3:
        raise ValueError(f"vectors has shape {tuple(vectors.shape)}; pass (Q, C, d) candidate vectors")
    if zeta is not None:
        zeta = _check_bound(zeta, "zeta", "pass each approximated vector's error bound (0 when exact)")
        if zeta.shape != vectors.shape[:2]:
            raise ValueError(f"zeta has shape {tuple(zeta.shape)}; it must be (Q, C) = {tuple(vectors.shape[:2])}")
    v = vectors.to(DTYPE)
    if bool((~torch.isfinite(v)).any()):
        raise ValueError("vectors has a NaN or inf entry; pass finite candidate vectors")
    gram = v @ v.transpose(1, 2)  # (Q, C, C)
    sq = gram.diagonal(dim1=1, dim2=2)
    d = (sq[:, :, None] + sq[:, None, :] - 2 * gram).clamp_min(0).sqrt()
    if not vectors_exact:
        if zeta is None:
            raise ValueError("vectors_exact=False needs zeta (Q, C): the ζ of each approximated vector")
        z = zeta.to(DTYPE)
        d = d + z[:, :, None] + z[:, None, :]
    return d.clamp_max(2.0 * item_norm)


def _as_q(x, Q: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=DTYPE)
    if t.ndim == 0:
        return t.expand(Q).clone()
    if t.shape != (Q,):
        raise ValueError(f"{name} has shape {tuple(t.shape)}; pass a scalar or one value per query ({Q},)")
    return t


def certify(scores: torch.Tensor, zeta: torch.Tensor | None, zeta_max, epsilon, k: int,
            vectors: torch.Tensor | None = None, vectors_exact: bool = False, valid: torch.Tensor | None = None,
            complete: torch.Tensor | None = None, item_norm: float = 1.0, tol: float = 0.0) -> Certificate:
    """Safe@1 / Safe@k per query with the pairwise bound and the closing term (module docstring).

    scores (Q, C): observed ŝ from the unit query, sorted descending along C (-inf for empty slots).
    zeta (Q, C): ζ per candidate (0 for exact or rescored scores); None = all 0.
    zeta_max: scalar or (Q,): ζ bound of items the search did not return.
    epsilon: scalar or (Q,): ε_q in normalised-score units (``normalised_epsilon``); inf = unbounded.
    k: the cut-off of Safe@k (Safe@1 is always computed too).
    vectors (Q, C, d) optional: candidate vectors for the pair distances (x̂, or the true x with
        ``vectors_exact=True``); without them every pair uses the cap ``2 * item_norm``.
    valid (Q, C) optional: real candidates (default: finite scores). Valid slots must come first.
    complete (Q,) optional: the list holds every live item (no closing term). Default: fewer valid
        candidates than C.
    """
    scores = torch.as_tensor(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores has shape {tuple(scores.shape)}; pass (Q, C) candidate scores, best first")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be a positive int")
    R = _check_positive(item_norm, "item_norm")
    tol = _check_tol(tol)
    Q, C = scores.shape
    s = scores.to(DTYPE)
    valid = torch.isfinite(s) if valid is None else torch.as_tensor(valid).to(torch.bool)
    if valid.shape != (Q, C):
        raise ValueError(f"valid has shape {tuple(valid.shape)}; it must match scores {(Q, C)}")
    if bool((valid & torch.isnan(s)).any()):
        raise ValueError("scores has a NaN in a valid slot; pass finite scores (-inf for empty slots)")
    if zeta is not None:
        zeta = torch.as_tensor(zeta)
        if zeta.shape != (Q, C):
            raise ValueError(f"zeta has shape {tuple(zeta.shape)}; it must match scores {(Q, C)}")
        _check_bound(torch.where(valid, zeta.to(DTYPE), torch.zeros((), dtype=DTYPE)), "zeta",
                     "pass each candidate's score error bound (0 for exact scores)")
    zm = _check_bound(_as_q(zeta_max, Q, "zeta_max"), "zeta_max",
                      "pass the score error bound of unreturned items (0 for an exact search)")
    eps = _check_bound(_as_q(epsilon, Q, "epsilon"), "epsilon", "use inf when no drift bound is known")
    if C == 0:
        return _no_candidates(Q, k, eps, zm)
    n_valid = valid.sum(1)
    if C and bool((valid[:, 1:] & ~valid[:, :-1]).any()):
        raise ValueError("valid candidates must come first in each row (pad empty slots at the end)")
    s = torch.where(valid, s, torch.full_like(s, -torch.inf))
    if C > 1:
        diffs = s[:, :-1] - s[:, 1:]
        pair_ok = valid[:, 1:]
        if bool(((diffs < 0) & pair_ok).any()):
            raise ValueError("scores must be sorted descending within each row (best candidate first)")
    z = torch.zeros_like(s) if zeta is None else torch.where(valid, zeta.to(DTYPE), torch.zeros_like(s))
    complete = (n_valid < C) if complete is None else torch.as_tensor(complete).to(torch.bool)
    if complete.shape != (Q,):
        raise ValueError(f"complete has shape {tuple(complete.shape)}; pass one flag per query ({Q},)")
    inf = torch.tensor(torch.inf, dtype=DTYPE)
    rows = torch.arange(Q)

    if vectors is not None:
        if vectors.shape[:2] != (Q, C):
            raise ValueError(f"vectors has shape {tuple(vectors.shape)}; pass (Q, C, d) aligned with scores")
        dist = pair_distance_bound(vectors, z, vectors_exact, R)
    else:
        dist = None

    last = s[rows, (n_valid - 1).clamp_min(0)]  # ŝ of the last returned candidate (Q,)
    # eps * d with eps = inf and d = 0 would be nan: d = 0 only for duplicate items, treat as inf
    def eps_times(d):
        out = eps.view(-1, *([1] * (d.ndim - 1))) * d
        return torch.where(torch.isnan(out), inf, out)

    # closing slack for every candidate i: ŝ_i - ŝ_last - 2R ε - ζ_i - ζ_max  (+inf when complete)
    closing = s - last[:, None] - eps_times(torch.full_like(s, 2 * R)) - z - zm[:, None]
    closing = torch.where(complete[:, None], inf, closing)

    # ---- Safe@1: top-1 against every other valid candidate j, and the closing term
    # certified radii: each condition holds iff ε < num / d (num = its margin without the ε term,
    # less tol); for the item error, iff δ < (slack - tol) / (2, or 2 + 2ε when d was bounded from x̂)
    closing_num = torch.where(complete[:, None], inf, s - last[:, None] - z - zm[:, None] - tol)
    closing_eps = closing_num / (2 * R)
    closing_zeta = (closing - tol) / 2
    pair_den = 2.0 + (0.0 if vectors_exact or dist is None else 2.0) * torch.where(torch.isfinite(eps), eps, 0.0)

    def radius(num, d):
        return torch.where(num > 0, num / d.clamp_min(1e-300), torch.zeros_like(num))

    if C > 1:
        d1 = dist[:, 0, 1:] if dist is not None else torch.full((Q, C - 1), 2 * R, dtype=DTYPE)
        p1 = s[:, :1] - s[:, 1:] - eps_times(d1) - z[:, :1] - z[:, 1:]
        p1 = torch.where(valid[:, 1:], p1, inf)
        cand1 = torch.cat([p1, closing[:, :1]], dim=1)  # (Q, C): j = 1..C-1, then closing (index C)
        slack1, arg1 = cand1.min(1)
        crit1 = arg1 + 1
        num1 = s[:, :1] - s[:, 1:] - z[:, :1] - z[:, 1:] - tol
        r1 = torch.where(valid[:, 1:], radius(num1, d1), inf).min(1).values
        zr1 = torch.where(valid[:, 1:], (p1 - tol) / pair_den[:, None], inf).min(1).values
    else:
        slack1, crit1 = closing[:, 0], torch.full((Q,), C, dtype=torch.long)
        r1 = zr1 = torch.full((Q,), torch.inf, dtype=DTYPE)
    slack1 = torch.where(n_valid >= 1, slack1, -inf)
    r1 = torch.minimum(r1, torch.where(closing_eps[:, 0] > 0, closing_eps[:, 0], 0.0))
    zr1 = torch.minimum(zr1, closing_zeta[:, 0])
    r1 = torch.where(n_valid >= 1, r1, 0.0)
    zr1 = torch.where(n_valid >= 1, zr1.clamp_min(0), 0.0)

    # ---- Safe@k: every i <= k < j among candidates, and the closing term for every i <= k
    kk = min(k, C)
    top_valid = valid[:, :kk]
    ck = torch.where(top_valid, closing[:, :kk], inf)  # (Q, kk)
    rk = torch.where(top_valid, torch.where(closing_eps[:, :kk] > 0, closing_eps[:, :kk], 0.0), inf).min(1).values
    zrk = torch.where(top_valid, closing_zeta[:, :kk], inf).min(1).values
    if C > kk:
        dk = dist[:, :kk, kk:] if dist is not None else torch.full((Q, kk, C - kk), 2 * R, dtype=DTYPE)
        pk = s[:, :kk, None] - s[:, None, kk:] - eps_times(dk) - z[:, :kk, None] - z[:, None, kk:]
        both = top_valid[:, :, None] & valid[:, None, kk:]
        pk = torch.where(both, pk, inf)  # (Q, kk, C - kk)
        allk = torch.cat([pk, ck[:, :, None]], dim=2)  # last column: closing
        numk = s[:, :kk, None] - s[:, None, kk:] - z[:, :kk, None] - z[:, None, kk:] - tol
        rk = torch.minimum(rk, torch.where(both, radius(numk, dk), inf).amin((1, 2)))
        zrk = torch.minimum(zrk, torch.where(both, (pk - tol) / pair_den[:, None, None], inf).amin((1, 2)))
    else:
        allk = ck[:, :, None]
    flat_min, flat_arg = allk.reshape(Q, allk.shape[1] * allk.shape[2]).min(1)
    width = allk.shape[2]
    crit_k = torch.stack([flat_arg // width, torch.where(flat_arg % width == width - 1, C, kk + flat_arg % width)], 1)
    slackk = torch.where(n_valid >= 1, flat_min, -inf)
    rk = torch.where(n_valid >= 1, rk, 0.0)
    zrk = torch.where(n_valid >= 1, zrk.clamp_min(0), 0.0)

    # ---- margins and the crude rule
    nan = torch.tensor(torch.nan, dtype=DTYPE)
    m2 = torch.where(n_valid >= 2, s[:, 0] - s[:, 1], nan) if C >= 2 else torch.full((Q,), torch.nan, dtype=DTYPE)
    mk = torch.where(n_valid >= k + 1, s[:, k - 1] - s[:, k], nan) if C >= k + 1 else torch.full((Q,), torch.nan, dtype=DTYPE)
    zc = torch.maximum(zm, z.max(1).values if C else zm)
    crude_rhs = eps_times(torch.full((Q,), 2 * R, dtype=DTYPE)) + 2 * zc + tol
    # a complete list with <= 1 (resp. <= k) items has nothing to flip against
    crude1 = torch.where(n_valid >= 2, m2 > crude_rhs, complete & (n_valid == 1))
    # m_k compares ŝ_k with ŝ_(k+1); with a complete list and no (k+1)-th item the top-k set is everything
    crudek = torch.where(n_valid >= k + 1, mk > crude_rhs, complete & (n_valid >= 1))
    # an incomplete list without a (k+1)-th candidate: ŝ_last = ŝ_k, margin 0, not certified (already False)

    zeta_1 = z[:, 0] if C else torch.zeros(Q, dtype=DTYPE)
    return Certificate(
        k=k, margin_top2=m2, margin_at_k=mk, epsilon=eps, zeta_1=zeta_1, zeta_max=zm,
        slack_at_1=slack1, slack_at_k=slackk, safe_at_1=slack1 > tol, safe_at_k=slackk > tol,
        crude_safe_at_1=crude1, crude_safe_at_k=crudek, critical_at_1=crit1, critical_at_k=crit_k,
        radius_at_1=r1, radius_at_k=rk, zeta_radius_at_1=zr1, zeta_radius_at_k=zrk,
    )


def _no_candidates(Q: int, k: int, eps: torch.Tensor, zm: torch.Tensor) -> Certificate:
    """The certificate of Q queries with no candidate slot (C = 0): nothing is certified."""
    nan = torch.full((Q,), torch.nan, dtype=DTYPE)
    no = torch.zeros(Q, dtype=torch.bool)
    ninf = torch.full((Q,), -torch.inf, dtype=DTYPE)
    return Certificate(
        k=k, margin_top2=nan, margin_at_k=nan.clone(), epsilon=eps, zeta_1=torch.zeros(Q, dtype=DTYPE), zeta_max=zm,
        slack_at_1=ninf, slack_at_k=ninf.clone(), safe_at_1=no, safe_at_k=no.clone(), crude_safe_at_1=no.clone(),
        crude_safe_at_k=no.clone(), critical_at_1=torch.zeros(Q, dtype=torch.long),
        critical_at_k=torch.zeros((Q, 2), dtype=torch.long), radius_at_1=torch.zeros(Q, dtype=DTYPE),
        radius_at_k=torch.zeros(Q, dtype=DTYPE), zeta_radius_at_1=torch.zeros(Q, dtype=DTYPE),
        zeta_radius_at_k=torch.zeros(Q, dtype=DTYPE),
    )


def top_changed(ids_before: torch.Tensor, ids_after: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Did the top-1 / the top-k *set* change? ids (Q, >= k) -> two (Q,) bool tensors (empty for Q = 0)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be a positive int")
    ids_before, ids_after = torch.as_tensor(ids_before), torch.as_tensor(ids_after)
    for name, t in (("ids_before", ids_before), ("ids_after", ids_after)):
        if t.ndim != 2 or t.shape[1] < k:
            raise ValueError(f"{name} has shape {tuple(t.shape)}; pass (Q, >= k={k}) result ids")
    if ids_before.shape[0] != ids_after.shape[0]:
        raise ValueError(f"ids_before has {ids_before.shape[0]} queries and ids_after {ids_after.shape[0]}; "
                         "pass the results of the same queries")
    a, b = ids_before[:, :k], ids_after[:, :k]
    top1 = a[:, 0] != b[:, 0]
    sa, _ = a.sort(1)
    sb, _ = b.sort(1)
    return top1, (sa != sb).any(1)
