"""Multi-vector cosine prefilter (docs/design.md section 5): r(x) = (1/n) sum_i cos(x, v_i); drop r < alpha.

Bases (rows of V, orthonormal):
* ``fixed``: computed once from the first arrivals (top-n PCA of the first window, or the first
  batch when that is all there is) and frozen, or passed explicitly (``Prefilter(basis=...)``);
* ``random``: a Gaussian matrix orthonormalised by QR (seeded), the unstructured control;
* ``adaptive``: top-n PCA of a sliding window of the last W arrivals, recomputed every T arrivals.
* ``none``: no prefilter (every arrival passes; used by baselines and pipelines without one).

PCA is uncentred (see ``pca_basis``). Its directions have no sign; each is oriented so the window mean projects positively, so r
measures closeness to the recent themes. The PCA window holds every arrival, dropped or not (a
basis fed only what it passed could never turn towards a new topic).

Threshold modes: ``absolute`` drops r < alpha; ``quantile`` drops the arrivals whose r is below the
alpha-quantile of the last W relevance scores (a rate-controlled filter: the bases can then be
compared at the same drop rate). Every dropped arrival is counted (``dropped``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from luma_pl.configuration import StrictConfig, require

BASES = ("fixed", "random", "adaptive", "none")
THRESHOLD_MODES = ("absolute", "quantile")


# ---------------------------------------------------------------------------------- pure core
def orthonormal_rows(a: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, d) orthonormal rows spanning the same space (QR, signs fixed by R's diagonal)."""
    q, r = np.linalg.qr(np.asarray(a, np.float64).T)
    s = np.sign(np.diag(r))
    s[s == 0] = 1
    return (q * s).T.astype(np.float32)


def random_basis(dim: int, n: int, seed: int) -> np.ndarray:
    """(n, dim) random orthonormal rows (Gaussian + QR)."""
    rng = np.random.default_rng(seed)
    return orthonormal_rows(rng.standard_normal((n, dim)))


def pca_basis(window: np.ndarray, n: int, init: np.ndarray | None = None) -> np.ndarray:
    """(n, d) top-n principal directions of the (W, d) window, oriented towards the window mean.

    Uncentred (directions of the second moment, i.e. the window's top right singular vectors): the
    first is close to the window's mean direction, the theme itself. Centred PCA would keep only the
    spread around the theme, to which an on-topic arrival is nearly orthogonal.

    ``init``: the previous basis (n, d). A sliding window moves by T << W rows between two
    recomputations, so its subspace is already close: subspace iteration started there needs 2
    passes instead of 4 from a random start (the adaptive prefilter recomputes every T arrivals, and
    this is its main cost)."""
    x = np.asarray(window, np.float32)
    mean = x.mean(axis=0)
    p = n + 8  # oversampled subspace
    if p >= min(x.shape):  # small problem: the exact SVD is cheap
        _, _, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
        v = vt[:n]
    else:  # top-n by seeded subspace iteration: O(W d p) instead of a full O(W d^2) SVD
        rng = np.random.default_rng(0)
        if init is not None and init.shape == (n, x.shape[1]):
            q = np.linalg.qr(np.concatenate([init.T, x.T @ rng.standard_normal((x.shape[0], p - n))
                                             .astype(np.float32)], axis=1))[0]
            passes = 2
        else:
            q = np.linalg.qr(x.T @ rng.standard_normal((x.shape[0], p)).astype(np.float32))[0]
            passes = 4
        for _ in range(passes):
            q = np.linalg.qr(x.T @ (x @ q))[0]
        _, _, vt = np.linalg.svd((x @ q).astype(np.float64), full_matrices=False)
        v = vt[:n] @ q.T.astype(np.float64)
    sign = np.sign(v @ mean)
    sign[sign == 0] = 1
    return (v * sign[:, None]).astype(np.float32)


def relevance(x: np.ndarray, basis: np.ndarray, unit: bool = False) -> np.ndarray:
    """(N,) r(x) = mean_i cos(x, v_i) for (N, d) rows x and (n, d) basis rows (``unit``: x rows are
    already unit, skip their norms)."""
    x = np.asarray(x, np.float32)
    norms = np.ones(len(x), np.float32) if unit else np.linalg.norm(x, axis=1)
    vn = np.linalg.norm(basis, axis=1)
    cos = (x @ basis.T) / np.maximum(norms[:, None] * vn[None, :], 1e-12)
    return cos.mean(axis=1)


def threshold_for(scores_window: np.ndarray, alpha: float, mode: str) -> float:
    """The relevance below which arrivals are dropped."""
    if mode == "absolute":
        return float(alpha)
    if len(scores_window) == 0 or alpha <= 0:
        return -np.inf
    k = int(alpha * (len(scores_window) - 1))  # the lower alpha-quantile (nearest rank, no interpolation)
    return float(np.partition(scores_window, k)[k])


# ---------------------------------------------------------------------------------- config
@dataclasses.dataclass
class PrefilterConfig(StrictConfig):
    """Settings of the multi-vector cosine prefilter."""

    basis: str = "adaptive"
    """'fixed', 'random', 'adaptive' (sliding-window PCA) or 'none' (pass everything)."""
    n_vectors: int = 5
    """n: basis vectors (the paper's default is 5)."""
    alpha: float = 0.2
    """absolute mode: drop r < alpha; quantile mode: the fraction of arrivals to drop (in [0, 1))."""
    threshold_mode: str = "absolute"
    """'absolute' (fixed alpha) or 'quantile' (drop the lowest alpha fraction of the recent window)."""
    window: int = 1024
    """W: arrivals kept for the PCA basis and the quantile threshold."""
    interval: int = 256
    """T: arrivals between two recomputations of the adaptive basis."""
    seed: int = 0
    """Seed of the random basis."""

    def validate(self) -> None:
        o = "PrefilterConfig"
        require(self.basis in BASES, o, "basis", self.basis, f"use one of {BASES}")
        require(self.threshold_mode in THRESHOLD_MODES, o, "threshold_mode", self.threshold_mode,
                f"use one of {THRESHOLD_MODES}")
        require(self.n_vectors >= 1, o, "n_vectors", self.n_vectors, "use n >= 1 (e.g. 5)")
        require(-1.0 <= self.alpha <= 1.0, o, "alpha", self.alpha, "a cosine threshold lies in [-1, 1]")
        require(self.threshold_mode == "absolute" or 0.0 <= self.alpha < 1.0, o, "alpha", self.alpha,
                "in quantile mode alpha is the fraction dropped: use [0, 1), e.g. 0.1")
        require(self.window > self.n_vectors, o, "window", self.window,
                f"the PCA window must hold more than n_vectors={self.n_vectors} arrivals")
        require(self.interval >= 1, o, "interval", self.interval, "use T >= 1 (e.g. 256)")
        require(self.seed >= 0, o, "seed", self.seed, "use a non-negative seed")


class Prefilter:
    """Stateful prefilter: ``step(x)`` -> (N,) keep mask; counts ``seen`` and ``dropped``."""

    def __init__(self, config: PrefilterConfig, dim: int, basis: np.ndarray | None = None):
        config.validate()
        if dim < config.n_vectors:
            raise ValueError(f"dim={dim} is smaller than n_vectors={config.n_vectors}; lower n_vectors")
        self.cfg = config
        self.dim = dim
        self.ring = np.zeros((config.window, dim), np.float32)  # (W, d) recent arrivals
        self.scores = np.zeros(config.window, np.float32)  # (W,) recent relevance scores
        self.filled = 0  # rows of ring holding arrivals (<= W)
        self.pos = 0  # next ring row
        self.since_refresh = 0
        self.seen = 0
        self.dropped = 0
        self.refreshes = 0
        if basis is not None:
            b = np.asarray(basis, np.float32)
            if b.ndim != 2 or b.shape[1] != dim:
                raise ValueError(f"basis must have shape (n, {dim}), got {b.shape}")
            self.basis = orthonormal_rows(b)
        elif config.basis == "random":
            self.basis = random_basis(dim, config.n_vectors, config.seed)
        else:
            self.basis = np.zeros((0, dim), np.float32)  # fixed/adaptive: set from the first arrivals

    def _push(self, x: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Write arrivals (and their scores) into the ring; return the ring rows written."""
        w = self.cfg.window
        x, r = x[-w:], r[-w:]
        idx = (self.pos + np.arange(len(x))) % w
        self.ring[idx] = x
        self.scores[idx] = r
        self.pos = int((self.pos + len(x)) % w)
        self.filled = int(min(w, self.filled + len(x)))
        return idx

    def _window(self) -> np.ndarray:
        return self.ring[: self.filled]

    def step(self, x: np.ndarray, unit: bool = False) -> np.ndarray:
        """(N, d) arrivals -> (N,) bool keep mask. Updates the window, the basis and the counters.
        ``unit``: the rows are already L2-normalised (the pipeline normalises once)."""
        x = np.asarray(x, np.float32)
        n = len(x)
        self.seen += n
        if self.cfg.basis == "none" or n == 0:
            return np.ones(n, bool)
        rows = None
        if len(self.basis) == 0:  # fixed/adaptive before any basis: learn it from the arrivals so far
            rows = self._push(x, np.zeros(n, np.float32))
            if self.filled <= self.cfg.n_vectors:
                return np.ones(n, bool)  # too few arrivals for n directions yet: pass them
            self.basis = pca_basis(self._window(), self.cfg.n_vectors)
            self.refreshes += 1
        r = relevance(x, self.basis, unit=unit)
        if rows is None:
            self._push(x, r)
        else:
            self.scores[rows] = r[-len(rows):]
        thr = threshold_for(self.scores[: self.filled], self.cfg.alpha, self.cfg.threshold_mode)
        keep = r >= thr
        self.dropped += int((~keep).sum())
        if self.cfg.basis == "adaptive":
            self.since_refresh += n
            if self.since_refresh >= self.cfg.interval:
                self.basis = pca_basis(self._window(), self.cfg.n_vectors, init=self.basis)
                self.since_refresh = 0
                self.refreshes += 1
        return keep

    def state_dict(self) -> dict:
        return {"ring": self.ring.copy(), "scores": self.scores.copy(), "basis": self.basis.copy(),
                "filled": self.filled, "pos": self.pos, "since_refresh": self.since_refresh, "seen": self.seen,
                "dropped": self.dropped, "refreshes": self.refreshes}

    def load_state_dict(self, state: dict) -> None:
        ring = state.get("ring")
        if ring is not None and np.asarray(ring).shape == self.ring.shape:
            self.ring = np.asarray(ring, np.float32).copy()
            self.scores = np.asarray(state.get("scores", np.zeros(self.cfg.window)), np.float32).copy()
        basis = state.get("basis")
        if basis is not None and np.asarray(basis).ndim == 2 and np.asarray(basis).shape[1] == self.dim:
            self.basis = np.asarray(basis, np.float32).copy()
        for k in ("filled", "pos", "since_refresh", "seen", "dropped", "refreshes"):
            setattr(self, k, int(state.get(k, 0)))
