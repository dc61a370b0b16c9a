"""Online clustering (docs/design.md section 5): m centroids, cosine assignment, eta = 1/(n_j + 1).

The update mu_j <- (1 - eta) mu_j + eta x with eta = 1/(n_j + 1) makes mu_j the running mean of
every arrival assigned to j. A batch is assigned against the centroids as they stood at its start
(mini-batch k-means, as the paper's MiniBatchKMeans); the update then adds the batch's points to
the running means exactly as one-by-one updates with those labels would (same result, one pass).

Seeding: k-means++ (D^2 sampling with cosine distance 1 - cos) on the first batch; when the first
batch holds fewer than m rows, the free slots are seeded the same way from the following batches.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from luma_pl.configuration import StrictConfig, require


# ---------------------------------------------------------------------------------- pure core
def normalise_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def kmeanspp_seeds(x: np.ndarray, k: int, rng: np.random.Generator, existing: np.ndarray | None = None) -> np.ndarray:
    """Indices of up to k rows of unit rows x chosen by k-means++ (cosine distance), given existing
    (unit) centroids. The first seed is uniform when there is no existing centroid."""
    n = len(x)
    k = min(k, n)
    if k <= 0:
        return np.empty(0, np.int64)
    chosen: list[int] = []
    if existing is not None and len(existing):
        dist = np.clip(1.0 - (x @ existing.T).max(axis=1), 0.0, None)
    else:
        first = int(rng.integers(n))
        chosen.append(first)
        dist = np.clip(1.0 - x @ x[first], 0.0, None)
    while len(chosen) < k:
        p = dist.astype(np.float64) ** 2
        total = p.sum()
        if total <= 0:  # every remaining point coincides with a seed: take unchosen ones in order
            rest = np.setdiff1d(np.arange(n), chosen)[: k - len(chosen)]
            chosen.extend(rest.tolist())
            break
        # D^2 draw by inverse CDF (what rng.choice(n, p=...) does, without its per-call validation)
        j = min(int(np.searchsorted(np.cumsum(p), rng.random() * total, side="right")), n - 1)
        chosen.append(j)
        dist = np.minimum(dist, np.clip(1.0 - x @ x[j], 0.0, None))
    return np.asarray(chosen, np.int64)


def assign(x: np.ndarray, centroids: np.ndarray, x_is_unit: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), cosines (N,)) of each row's most similar centroid (ties: lowest index).
    ``x_is_unit``: the rows are already unit (skips one normalisation pass on the hot path)."""
    x = np.asarray(x, np.float32)
    sims = (x if x_is_unit else normalise_rows(x)) @ normalise_rows(centroids).T
    labels = sims.argmax(axis=1)
    return labels.astype(np.int64), sims[np.arange(len(x)), labels]


def running_mean_update(centroids: np.ndarray, counts: np.ndarray, x: np.ndarray, labels: np.ndarray) -> None:
    """In place: mu_j <- (n_j mu_j + sum of its new points) / (n_j + c_j); n_j += c_j. Equal to
    applying mu <- (1 - eta) mu + eta x, eta = 1/(n + 1), once per point."""
    m, d = centroids.shape
    c = np.bincount(labels, minlength=m).astype(np.int64)
    hit = c > 0
    onehot = np.zeros((m, len(labels)), np.float32)
    onehot[labels, np.arange(len(labels))] = 1.0
    sums = onehot[hit] @ x.astype(np.float32)  # (hit clusters, d)
    sums_full = np.zeros((m, d), np.float64)
    sums_full[hit] = sums
    sums = sums_full
    centroids[hit] = ((counts[hit, None] * centroids[hit].astype(np.float64) + sums[hit]) /
                      (counts[hit] + c[hit])[:, None]).astype(np.float32)
    counts += c


# ---------------------------------------------------------------------------------- config
@dataclasses.dataclass
class ClusterConfig(StrictConfig):
    """Settings of the online clustering."""

    m: int = 150
    """Number of centroids (the paper's k; its default is 150)."""
    seed: int = 0
    """Seed of the k-means++ draws."""

    def validate(self) -> None:
        require(self.m >= 1, "ClusterConfig", "m", self.m, "use m >= 1 centroids (e.g. 150)")
        require(self.seed >= 0, "ClusterConfig", "seed", self.seed, "use a non-negative seed")


class OnlineClusterer:
    """``assign_update(x)`` -> (N,) labels; centroids (m, d) and counts (m,) are the state."""

    def __init__(self, config: ClusterConfig, dim: int):
        config.validate()
        self.cfg = config
        self.dim = dim
        self.centroids = np.zeros((config.m, dim), np.float32)
        self.counts = np.zeros(config.m, np.int64)
        self.active = 0  # seeded slots (0..active-1)
        self.batches = 0  # batches seen (the seeding draws are keyed by it)

    def assign_update(self, x: np.ndarray, unit: bool = False) -> np.ndarray:
        """(N,) labels of (N, d) arrivals; updates the centroids. ``unit``: rows already unit."""
        x = np.asarray(x, np.float32) if unit else normalise_rows(np.asarray(x, np.float32))
        self.batches += 1
        if len(x) == 0:
            return np.empty(0, np.int64)
        if self.active < self.cfg.m:
            rng = np.random.default_rng([self.cfg.seed, self.batches])
            cur = normalise_rows(self.centroids[: self.active]) if self.active else None
            seeds = kmeanspp_seeds(x, self.cfg.m - self.active, rng, cur)
            self.centroids[self.active: self.active + len(seeds)] = x[seeds]
            self.active += len(seeds)
        labels, _ = assign(x, self.centroids[: self.active], x_is_unit=True)
        running_mean_update(self.centroids, self.counts, x, labels)
        return labels

    def unit_centroids(self, labels: np.ndarray) -> np.ndarray:
        """(n, d) unit-norm centroids of the given labels (the prototypes)."""
        return normalise_rows(self.centroids[np.asarray(labels, np.int64)])

    def state_dict(self) -> dict:
        return {"centroids": self.centroids.copy(), "counts": self.counts.copy(), "active": self.active,
                "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        c = state.get("centroids")
        if c is not None and np.asarray(c).shape == self.centroids.shape:
            self.centroids = np.asarray(c, np.float32).copy()
            self.counts = np.asarray(state.get("counts", np.zeros(self.cfg.m)), np.int64).copy()
        self.active = int(state.get("active", 0))
        self.batches = int(state.get("batches", 0))
