"""Stateful shells over ``functional``: which ε, bridging a query, certifying a memory search, and
``SafeAtK`` (a torchmetrics Metric whose states are sums, so batches and ranks merge exactly).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torchmetrics import Metric

from luma_pl.configuration import StrictConfig, require
from luma_pl.telemetry import functional as F

MEMORY_ITEM_NORM = 1.0 + 1e-3
"""``TieredMemory`` admits vectors whose norm is within 1e-3 of 1 (``tiered._NORM_TOL``)."""
FLOAT32_TOL = 1e-5
"""Absolute slack for float32 scores (faiss computes them in float32)."""


@dataclasses.dataclass
class CertificateConfig(StrictConfig):
    """How answers are certified (the top-level ``safe_at_k`` group of train.py and evaluate.py:
    the ``SafeAtKLogger`` callback's probes and the evaluator's queries alike)."""

    k: int = 10
    """Cut-off of Safe@k (and of the evaluator's metrics)."""
    epsilon_source: str = "interval"
    """ε of the certificate: 'interval', 'reference', 'frozen' (0; a frozen bridge only) or 'given'."""
    epsilon_value: float | None = None
    """ε when ``epsilon_source='given'``."""
    rescore: bool = True
    """Re-score warm PQ candidates exactly (ζ = 0 on those hits)."""
    calibrated_alpha: float = 0.05
    """The calibrated mode (``telemetry/calibrated.py``, reported apart from the worst case): Safe@k
    at the split-conformal 1 - α bound of the drift recent refreshes realised on the probes."""
    calibration_window: int = 16384
    """Realised probe drifts the calibrated mode keeps (probes x refreshes; oldest dropped). Larger
    adapts more slowly to a change, so the audit sees a topic jump for longer before the window
    absorbs it."""

    def validate(self) -> None:
        n = "CertificateConfig"
        require(0.0 < self.calibrated_alpha < 1.0, n, "calibrated_alpha", self.calibrated_alpha,
                "use a miscoverage level in (0, 1), e.g. 0.05")
        require(isinstance(self.calibration_window, int) and self.calibration_window >= 1, n, "calibration_window",
                self.calibration_window, "use >= 1 drift values, e.g. 16384")
        require(isinstance(self.k, int) and self.k >= 1, n, "k", self.k, "use k >= 1")
        require(self.epsilon_source in F.EPSILON_SOURCES, n, "epsilon_source", self.epsilon_source,
                f"use one of {F.EPSILON_SOURCES}")
        require(self.epsilon_source != "given" or (self.epsilon_value is not None and self.epsilon_value >= 0), n,
                "epsilon_value", self.epsilon_value, "epsilon_source='given' needs epsilon_value >= 0")


@dataclasses.dataclass(frozen=True)
class EpsilonChoice:
    value: float
    """The bridge's drift bound (operator norm; affine bound when centred); inf = not yet known."""
    source: str
    """One of ``functional.EPSILON_SOURCES``."""
    affine: bool
    """The bound includes an offset change (centred bridge): D = ε max(||a||, 1)."""

    def __post_init__(self) -> None:
        if self.source not in F.EPSILON_SOURCES:
            raise ValueError(f"source={self.source!r}: use one of {F.EPSILON_SOURCES}")
        if not isinstance(self.value, (int, float)) or isinstance(self.value, bool) or not (self.value >= 0):
            raise ValueError(f"value={self.value!r} (epsilon from {self.source!r}) must be a number >= 0 and not "
                             "NaN; use inf when no drift bound is known")


def choose_epsilon(bridge, source: str = "interval", value: float | None = None) -> EpsilonChoice:
    """ε for the certificate (docs/design.md section 6).

    ``interval``: ``bridge.epsilon()`` = drift over the last refresh interval (the default: the drift
    the bridge is assumed to make next; the online audit checks that assumption). ``reference``:
    ``bridge.drift_from_reference()``. ``frozen``: 0, allowed only for a bridge that will not move.
    ``given``: ``value``.
    """
    if source not in F.EPSILON_SOURCES:
        raise ValueError(f"source={source!r}: use one of {F.EPSILON_SOURCES}")
    affine = _affine(bridge)
    if source == "frozen":
        return EpsilonChoice(0.0, source, affine)
    if source == "given":
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0):
            raise ValueError(f"source='given' needs value >= 0, not NaN (got value={value!r}); use inf when no "
                             "bound is known")
        return EpsilonChoice(float(value), source, affine)
    if bridge is None:
        raise ValueError(f"source={source!r} needs a bridge to measure drift on")
    v = bridge.epsilon() if source == "interval" else bridge.drift_from_reference()
    v = math.inf if v is None else float(v)
    if not (v >= 0):
        method = "epsilon()" if source == "interval" else "drift_from_reference()"
        raise ValueError(f"the bridge's {method} is {v!r}: a drift bound must be >= 0 and not NaN (the bridge's "
                         "weights are probably corrupt); reload the bridge from a good checkpoint or pass "
                         "source='given' with value=")
    return EpsilonChoice(v, source, affine)


def _affine(bridge) -> bool:
    """The bridge's drift bound has an offset part (D = ε max(||a||, 1)): a centred Procrustes map or
    a learned MLP (``bridge.affine``)."""
    if bridge is not None and hasattr(bridge, "affine"):
        return bool(bridge.affine)
    return bool(getattr(getattr(bridge, "config", None), "center", False))


@torch.no_grad()
def bridge_queries(bridge, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit bridged queries q (Q, d_c) float32, ``||a||`` (Q,) and ``||f(a)||`` (Q,) float64, where
    f is the un-normalised map: ``A a + b`` for ``StreamingProcrustes``, ``bridge.raw(a)`` for a
    ``LearnedBridge``. q is computed exactly as ``bridge.forward`` does."""
    a64 = torch.as_tensor(a).to(F.DTYPE)
    if hasattr(bridge, "raw"):
        param = next(bridge.parameters())
        u = bridge.raw(torch.as_tensor(a, dtype=param.dtype).to(param.device)).to(F.DTYPE).cpu()
    else:
        u = a64 @ bridge.A.to(F.DTYPE).T
        if getattr(bridge.config, "center", False):
            u = u + bridge.b.to(F.DTYPE)
    q = bridge(torch.as_tensor(a, dtype=torch.float32))
    return q, a64.norm(dim=1), u.norm(dim=1)


def query_epsilon(choice: EpsilonChoice, a_norm: torch.Tensor, u_norm: torch.Tensor) -> torch.Tensor:
    """ε_q per query (normalised-score units) from an ``EpsilonChoice``."""
    if math.isinf(choice.value):
        return torch.full(a_norm.shape, math.inf, dtype=F.DTYPE)
    return F.normalised_epsilon(choice.value, a_norm, u_norm, affine=choice.affine)


def candidate_vectors(memory, ids: np.ndarray, approximate: bool) -> tuple[np.ndarray, np.ndarray]:
    """(Q, C, d) vectors of search hits and a (Q, C) mask of hits that had a vector.

    ``approximate=False``: the originals (true x). ``approximate=True``: what a PQ score was computed
    from, x̂ = decode(code) for IVF items (exact originals for hot and buffer items); the originals
    are only used to regenerate the same deterministic codes faiss holds.
    """
    from luma_pl.memory.policy import WARM

    Q, C = ids.shape
    found = ids >= 0
    keys = np.zeros(ids.shape, np.int64)
    flat = ids[found].tolist()
    keys[found] = [memory.key_of[i] for i in flat]
    x = memory.originals.get(keys.ravel()).reshape(Q, C, -1).astype(np.float32)
    x[~found] = 0
    if approximate and memory.warm.index is not None:
        pq = found & (memory.locations[keys] == WARM)
        if pq.any():
            xs = np.ascontiguousarray(x[pq])
            x[pq] = memory.warm.reconstruct(keys[pq], xs)  # each key with its own generation's codes
    return x, found


def certify_search(result, k: int, epsilon_q: torch.Tensor, memory=None, rescored: bool = False,
                   distances: str = "vectors", tol: float = FLOAT32_TOL) -> F.Certificate:
    """Certificate of a ``TieredMemory.search`` result (``SearchResult``) for C >= k + 1 candidates.

    ``distances``: ``"vectors"`` reads candidate vectors from ``memory`` (true x where the score is
    exact, x̂ plus ζ where it is a PQ score); ``"cap"`` uses ``||x_i - x_j|| <= 2R`` only.

    ``rescored`` (the search ran with ``rescore=True``): candidate scores are exact (ζ_i = 0), but an
    unreturned warm item y is only known through its PQ score p_y <= p_last (the last PQ candidate
    of the oversampled list), so ``s_y <= p_last + ζ_max``: with the search's ``pq_floor`` (= p_last)
    the closing term bounds unreturned items by ``max(ŝ_last, p_last + ζ_max)``. Without it (a result
    from elsewhere), every rescored candidate has exact score >= p_last - ζ_max, so
    ``s_y <= ŝ_last + 2 ζ_max``.

    Empty slots past the last valid candidate of every row are cut down to one before anything
    is computed: a search with k far above the live items (padded to k columns) certifies exactly
    as its valid columns plus one empty slot (which still marks a row as complete), instead of
    building (Q, k, d) vectors and (Q, k, k) pair bounds.
    """
    ids = np.asarray(result.ids)
    width = min(ids.shape[1], int((ids >= 0).sum(1).max(initial=0)) + 1)
    if width < ids.shape[1]:
        result = dataclasses.replace(result, ids=ids[:, :width], scores=np.asarray(result.scores)[:, :width],
                                     zeta=np.asarray(result.zeta)[:, :width])
    scores = torch.from_numpy(np.asarray(result.scores))
    zeta = torch.from_numpy(np.asarray(result.zeta))
    vectors, exact = None, False
    if distances == "vectors":
        if memory is None:
            raise ValueError("distances='vectors' needs memory= (the TieredMemory that answered)")
        approx = bool((np.asarray(result.zeta) > 0).any())
        x, _ = candidate_vectors(memory, np.asarray(result.ids), approximate=approx)
        vectors = torch.from_numpy(x)
        # x̂ + ζ bound: exact hits have ζ = 0, so the bound is their exact distance
        exact = not approx
    elif distances != "cap":
        raise ValueError(f"distances={distances!r}: use 'vectors' or 'cap'")
    zeta_max = float(result.zeta_max) * (2.0 if rescored else 1.0)
    floor = getattr(result, "pq_floor", None)
    if rescored and floor is not None:
        # the search says how far down the PQ list it fetched: an unreturned warm item y of a probed
        # list has s_y <= p_floor + ζ_y <= p_floor + ζ_max; an unreturned exact item is <= ŝ_last.
        # As a per-query ζ term next to ŝ_last: max(0, p_floor + ζ_max - ŝ_last), never above 2 ζ_max.
        valid = torch.from_numpy(np.asarray(result.ids) >= 0)
        n_valid = valid.sum(1)
        last = scores.to(torch.float64).gather(1, (n_valid - 1).clamp_min(0)[:, None])[:, 0]
        fl = torch.from_numpy(np.asarray(floor, np.float64))
        term = (fl + float(result.zeta_max) - last).clamp_min(0.0)
        term = torch.where(torch.isfinite(fl), term, torch.zeros_like(term))
        zeta_max = torch.minimum(term, torch.full_like(term, zeta_max))
    return F.certify(scores, zeta, zeta_max, epsilon_q, k, vectors=vectors, vectors_exact=exact,
                     valid=torch.from_numpy(np.asarray(result.ids) >= 0), item_norm=MEMORY_ITEM_NORM, tol=tol)


class SafeAtK(Metric):
    """Rates over queries: Safe@1, Safe@k and the crude rule's, with sum-reduced states.

    ``update(cert)`` with a ``functional.Certificate``; ``compute()`` -> dict of rates (nan when no
    query was counted) plus the mean ε and ζ_1.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    _FIELDS = ("safe_at_1", "safe_at_k", "crude_safe_at_1", "crude_safe_at_k")

    def __init__(self, k: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r} must be a positive int, e.g. k=10")
        self.k = k
        for name in (*self._FIELDS, "count", "epsilon_sum", "zeta_1_sum", "epsilon_finite"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, cert: F.Certificate) -> None:
        if cert.k != self.k:
            raise ValueError(f"certificate has k={cert.k} but this SafeAtK has k={self.k}")
        for name in self._FIELDS:
            setattr(self, name, getattr(self, name) + getattr(cert, name).sum().to(torch.float64))
        self.count += float(cert.safe_at_1.numel())
        finite = torch.isfinite(cert.epsilon)
        self.epsilon_sum += cert.epsilon[finite].sum().to(torch.float64)
        self.epsilon_finite += float(finite.sum())
        self.zeta_1_sum += cert.zeta_1.sum().to(torch.float64)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        out = {name: (getattr(self, name) / n if float(n) else nan) for name in self._FIELDS}
        out["epsilon_mean"] = self.epsilon_sum / self.epsilon_finite if float(self.epsilon_finite) else nan
        out["zeta_1_mean"] = self.zeta_1_sum / n if float(n) else nan
        out["count"] = n
        return out
