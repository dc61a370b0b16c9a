"""Pure functional core of the streaming orthogonal Procrustes bridge (docs/design.md section 3).

Everything here is a function of its arguments: no module state, no distributed calls. The
stateful ``StreamingProcrustes`` and the LightningModules are thin shells over these, so the
maths is tested once, here.

Shapes: ``c`` canonical vectors ``(N, d_c)``, ``s`` source vectors ``(N, d_s)``,
``M`` the decayed cross-covariance ``(d_c, d_s)`` float64, ``W`` the bridge ``(d_c, d_s)``.
The bridge maps a source vector to canonical space: ``q = W s / ||W s||``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

ACC_DTYPE = torch.float64  # sums of many outer products lose ~1e-7 per step in float32


class Stats(NamedTuple):
    """Decayed anchor statistics. Every field obeys ``x_t = lam * x_{t-1} + (batch term)``.

    M:      (d_c, d_s)  sum_i w_i c_i s_i^T
    weight: ()          sum_i w_i (the decayed pair count; equals the pair count when lam = 1)
    sum_c:  (d_c,)      sum_i w_i c_i            (used for centring)
    sum_s:  (d_s,)      sum_i w_i s_i
    sq_s:   ()          sum_i w_i ||s_i||^2      (used for the isotropic scale)
    """

    M: torch.Tensor
    weight: torch.Tensor
    sum_c: torch.Tensor
    sum_s: torch.Tensor
    sq_s: torch.Tensor


def zeros(d_c: int, d_s: int, device: torch.device | str | None = None) -> Stats:
    """Empty statistics for a ``d_s -> d_c`` bridge."""
    z = dict(dtype=ACC_DTYPE, device=device)
    return Stats(
        torch.zeros(d_c, d_s, **z), torch.zeros((), **z), torch.zeros(d_c, **z),
        torch.zeros(d_s, **z), torch.zeros((), **z),
    )


def check_pairs(c: torch.Tensor, s: torch.Tensor, d_c: int | None = None, d_s: int | None = None) -> None:
    """Raise ``ValueError`` naming the argument when types, shapes or values are unusable: not a
    real-valued torch tensor, shapes that disagree, NaN/inf, or an all-zero row (an absent embedding:
    it would count as a pair and shift the anchor means while carrying no direction)."""
    for name, x in (("c", c), ("s", s)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} is a {type(x).__name__}, not a torch.Tensor; pass torch.as_tensor({name})")
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} has dtype {x.dtype}; pass real float rows (e.g. {name}.double())")
    if c.ndim != 2 or s.ndim != 2:
        raise ValueError(
            f"c has shape {tuple(c.shape)} and s has shape {tuple(s.shape)}; both must be 2-D "
            "(N, d): pass one row per anchor pair"
        )
    if c.shape[0] != s.shape[0]:
        raise ValueError(
            f"c has {c.shape[0]} rows but s has {s.shape[0]}; pass the same anchor pairs in the same order"
        )
    if d_c is not None and c.shape[1] != d_c:
        raise ValueError(f"c has dim {c.shape[1]} but the bridge's canonical dim d_c={d_c}; pass canonical vectors as c")
    if d_s is not None and s.shape[1] != d_s:
        raise ValueError(f"s has dim {s.shape[1]} but the bridge's source dim d_s={d_s}; pass source vectors as s")
    for name, x in (("c", c), ("s", s)):
        if x.numel() and not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).any(dim=1).sum())
            raise ValueError(f"{name} has {bad} row(s) with NaN/inf; drop or fix those anchor pairs before fitting")
        if x.numel() and bool((x == 0).all(dim=1).any()):
            row = int((x == 0).all(dim=1).nonzero()[0, 0])
            raise ValueError(f"{name} row {row} is all zeros (an absent embedding); keep only pairs whose "
                             "has[space] is True for both spaces")


def check_lam(lam: float) -> None:
    if not (0.0 < float(lam) <= 1.0):
        raise ValueError(f"lam={lam!r} is outside (0, 1]; use 1.0 for no forgetting or e.g. 0.99 to forget old pairs")


def increment(c: torch.Tensor, s: torch.Tensor) -> Stats:
    """The batch term of every statistic (no decay). ``c`` (N, d_c), ``s`` (N, d_s); N may be 0."""
    c64, s64 = c.to(ACC_DTYPE), s.to(ACC_DTYPE)
    return Stats(
        c64.T @ s64,  # (d_c, N) @ (N, d_s) -> (d_c, d_s)
        torch.tensor(float(c.shape[0]), dtype=ACC_DTYPE, device=c.device),
        c64.sum(0), s64.sum(0), (s64 * s64).sum(),
    )


def accumulate(M: torch.Tensor, count: torch.Tensor | float, c: torch.Tensor, s: torch.Tensor,
               lam: float = 1.0, stats: Stats | None = None) -> tuple[torch.Tensor, torch.Tensor, Stats | None]:
    """One streaming step: ``M_t = lam * M_{t-1} + sum_i c_i s_i^T`` and ``count_t = lam * count_{t-1} + N``.

    ``M`` (d_c, d_s) float64 and ``count`` (decayed pair weight) are returned new (inputs are not
    modified). ``stats`` (optional) carries the centring/scaling sums and is decayed and
    incremented the same way; its own ``M``/``weight`` fields are ignored in favour of the
    arguments. Returns ``(M_t, count_t, stats_t or None)``.
    """
    check_lam(lam)
    check_pairs(c, s, M.shape[0], M.shape[1])
    c64, s64 = c.to(device=M.device, dtype=ACC_DTYPE), s.to(device=M.device, dtype=ACC_DTYPE)
    # one fused GEMM: lam * M + c^T s, (d_c, N) @ (N, d_s)
    M_t = torch.addmm(M.to(ACC_DTYPE), c64.T, s64, beta=lam)
    count_t = torch.as_tensor(count, dtype=ACC_DTYPE, device=M.device) * lam + c.shape[0]
    if stats is None:
        return M_t, count_t, None
    new = Stats(M_t, count_t, stats.sum_c * lam + c64.sum(0), stats.sum_s * lam + s64.sum(0),
                stats.sq_s * lam + (s64 * s64).sum())
    return M_t, count_t, new


def accumulate_(stats: Stats, c: torch.Tensor, s: torch.Tensor, lam: float = 1.0) -> Stats:
    """In-place ``accumulate`` on every field of ``stats`` (the hot path of the stateful bridge).

    Same arithmetic as ``accumulate`` (``addmm_`` is ``beta * M + c^T s`` in one BLAS call),
    without allocating a new (d_c, d_s) matrix per step. ``c``, ``s`` must already be checked.
    """
    c64, s64 = c.to(device=stats.M.device, dtype=ACC_DTYPE), s.to(device=stats.M.device, dtype=ACC_DTYPE)
    stats.M.addmm_(c64.T, s64, beta=lam)  # (d_c, N) @ (N, d_s)
    stats.weight.mul_(lam).add_(c.shape[0])
    stats.sum_c.mul_(lam).add_(c64.sum(0))
    stats.sum_s.mul_(lam).add_(s64.sum(0))
    stats.sq_s.mul_(lam).add_((s64 * s64).sum())
    return stats


def decay_add(a: Stats, b: Stats, lam: float) -> Stats:
    """``lam * a + b`` field by field (used to merge a per-rank increment into the totals)."""
    return Stats(*(x * lam + y for x, y in zip(a, b, strict=False)))


def centred_cross(stats: Stats, center: bool) -> torch.Tensor:
    """Cross-covariance the SVD sees: ``M`` or ``M - sum_c sum_s^T / weight`` (d_c, d_s)."""
    if not center:
        return stats.M
    if float(stats.weight) <= 0:
        raise ValueError("weight=0: no anchor pairs accumulated; fit pairs before solving")
    return stats.M - torch.outer(stats.sum_c, stats.sum_s) / stats.weight


def solve(M: torch.Tensor, proper_rotation: bool = False) -> torch.Tensor:
    """Orthogonal Procrustes: ``argmax_W tr(W^T M)`` over semi-orthogonal W, i.e. ``W = U V^T``.

    ``M = U S V^T`` (thin SVD). W has shape (d_c, d_s): orthonormal columns when d_c >= d_s
    (``W^T W = I``), orthonormal rows otherwise (``W W^T = I``). With ``proper_rotation`` (square
    only) the result is the best rotation (det = +1): when det(U V^T) = -1 the singular vector of
    the smallest singular value flips sign (Kabsch/Umeyama), costing the least objective.
    """
    if M.ndim != 2:
        raise ValueError(f"M has shape {tuple(M.shape)}; pass the (d_c, d_s) cross-covariance")
    if not bool(torch.isfinite(M).all()):
        raise ValueError("M contains NaN/inf; an anchor pair was not finite — reset the bridge and refit")
    U, _, Vh = torch.linalg.svd(M.to(ACC_DTYPE), full_matrices=False)  # (d_c, r), (r,), (r, d_s)
    if proper_rotation:
        if M.shape[0] != M.shape[1]:
            raise ValueError(
                f"proper_rotation=True needs a square M but M has shape {tuple(M.shape)}; "
                "det is undefined for d_c != d_s: set proper_rotation=False"
            )
        if float(torch.linalg.det(U @ Vh)) < 0:
            U = U.clone()
            U[:, -1] = -U[:, -1]  # singular values are sorted descending: the last is the smallest
    return U @ Vh


def scale_factor(stats: Stats, W: torch.Tensor, center: bool) -> torch.Tensor:
    """Least-squares isotropic scale rho of ``c ~ mu_c + rho W (s - mu_s)`` (Umeyama 1991).

    rho = tr(W^T C) / sum_i w_i ||s_i - mu_s||^2, with C the (centred) cross-covariance.
    """
    C = centred_cross(stats, center)
    var_s = stats.sq_s - (stats.sum_s @ stats.sum_s) / stats.weight if center else stats.sq_s
    if float(var_s) <= 0:
        raise ValueError(f"source variance={float(var_s)}: all source vectors coincide; disable scale or add pairs")
    return (W * C).sum() / var_s


def affine(W: torch.Tensor, mu_c: torch.Tensor | None = None, mu_s: torch.Tensor | None = None,
           rho: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fitted map as ``f(s) = A s + b`` (before normalisation): ``A = rho W``,
    ``b = mu_c - rho W mu_s`` (``None`` when not centred)."""
    A = W * rho
    if mu_c is None:
        return A, None
    return A, mu_c - A @ mu_s


def apply(W: torch.Tensor, s: torch.Tensor, b: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    """Bridge source vectors: ``q = (W s + b) / ||W s + b||``. ``s`` (N, d_s) -> (N, d_c), dtype of s."""
    if s.ndim != 2 or s.shape[1] != W.shape[1]:
        raise ValueError(f"s has shape {tuple(s.shape)} but the bridge expects (N, {W.shape[1]}); pass source-space vectors")
    q = s.to(W.dtype) @ W.T  # (N, d_s) @ (d_s, d_c) -> (N, d_c)
    if b is not None:
        q = q + b
    return torch.nn.functional.normalize(q, dim=-1, eps=eps).to(s.dtype)


def drift(W_a: torch.Tensor, W_b: torch.Tensor) -> torch.Tensor:
    """Spectral norm ``||W_a - W_b||_2``: the largest change of ``W a`` over unit ``a``."""
    if W_a.shape != W_b.shape:
        raise ValueError(f"W_a has shape {tuple(W_a.shape)} and W_b {tuple(W_b.shape)}; compare bridges of the same dims")
    return torch.linalg.matrix_norm((W_a - W_b).to(ACC_DTYPE), ord=2)


def affine_drift(A_a: torch.Tensor, b_a: torch.Tensor | None, A_b: torch.Tensor, b_b: torch.Tensor | None) -> torch.Tensor:
    """Bound on ``sup_{||a|| <= 1} ||f_a(a) - f_b(a)||`` for affine maps ``f(a) = A a + b``.

    ``||(A_a - A_b) a + (b_a - b_b)|| <= ||A_a - A_b||_2 ||a|| + ||b_a - b_b||`` (triangle inequality);
    equal to the spectral norm when neither map has an offset.
    """
    eps = drift(A_a, A_b)
    if b_a is None and b_b is None:
        return eps
    za = b_a if b_a is not None else torch.zeros_like(b_b)
    zb = b_b if b_b is not None else torch.zeros_like(b_a)
    return eps + torch.linalg.vector_norm((za - zb).to(ACC_DTYPE))
