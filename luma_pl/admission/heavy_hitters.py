"""Heavy-hitter counters over integer labels: random eviction, min-eviction, Space-Saving, Count-Min.

A counter tracks at most ``B`` labels (``B_t`` when adaptive) with a count each. On an arrival of
label l with weight w (1 for cluster labels; a hit count for item ids in migration):

* l tracked                      -> count += w (Count-Min: count = the sketch estimate)
* l new, room left               -> admitted with count w (Count-Min: only if its estimate >= threshold)
* l new, counter full:
  - ``random``: with probability u, evict a uniformly random tracked label, admit l (count w)
  - ``min``:    with probability u, evict the smallest count, admit l (count w)
  - ``space_saving``: always evict the smallest count m, admit l with count m + w, error m
    (Metwally et al.); count overestimates the truth by at most N/B, and every label with a true
    count > N/B is tracked. u does not gate it (a gate would void the guarantee).
  - ``count_min``: admit l when its sketch estimate exceeds the smallest tracked estimate (and the
    threshold), evicting that label; the sketch never underestimates (Cormode & Muthukrishnan).
  Otherwise the label is *rejected* (counted).

Randomness is counter-based (splitmix64 of (seed, arrival index)), so a resumed or replicated
counter draws exactly the same numbers without saving an RNG state.

Pure functions: ``splitmix64``, ``uniform01``, ``countmin_columns``, ``countmin_estimate``,
``space_saving_merge``. ``HeavyHitterCounter`` is the thin stateful wrapper.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from luma_pl.configuration import StrictConfig, require

POLICIES = ("random", "min", "space_saving", "count_min")
_M64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------- pure helpers
def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of uint64 values (vectorised; identical on every machine)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _mix1(seed: int, t: int) -> int:
    """Scalar splitmix64 of (seed, t) as a Python int (fast path for per-arrival draws)."""
    z = (seed * 0x9E3779B97F4A7C15 + t + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def uniform01(seed: int, t: int) -> float:
    """U_t in [0, 1): a pure function of (seed, arrival index t)."""
    return (_mix1(seed, t) >> 11) / float(1 << 53)


def countmin_columns(labels: np.ndarray, depth: int, width: int, seed: int) -> np.ndarray:
    """(depth, n) column of each label in each sketch row (row r uses hash seed (seed, r))."""
    lab = np.asarray(labels, dtype=np.int64).astype(np.uint64)
    rows = []
    for r in range(depth):
        salt = np.uint64(splitmix64(np.uint64((seed * 1_000_003 + r) & _M64)))
        rows.append((splitmix64(lab ^ salt) % np.uint64(width)).astype(np.int64))
    return np.stack(rows) if rows else np.empty((0, len(lab)), np.int64)


def countmin_estimate(table: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(n,) min over rows of table[r, cols[r]]: never below the true count."""
    return table[np.arange(table.shape[0])[:, None], cols].min(axis=0)


def countmin_dims(epsilon: float, delta: float) -> tuple[int, int]:
    """(width, depth) with estimate <= true + epsilon*N with probability >= 1 - delta."""
    return int(math.ceil(math.e / epsilon)), int(math.ceil(math.log(1.0 / delta)))


def space_saving_merge(summaries: list[tuple[np.ndarray, np.ndarray, np.ndarray]], capacity: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge Space-Saving summaries ``(labels, counts, errors)`` of disjoint streams into one of at
    most ``capacity`` labels (Agarwal et al., "Mergeable summaries", via the Misra-Gries isomorphism).

    Each summary i with minimum m_i (0 when it is not full) becomes Misra-Gries counters
    g = count - m_i (a lower bound of the truth, short by at most m_i); the counters are summed,
    the (capacity+1)-th largest sum delta is subtracted and non-positive ones dropped. With
    D = sum_i m_i + delta, the result's count g + D never underestimates and overestimates by at
    most D <= N/capacity, so every label with true count > N/capacity survives. Errors are D.
    The output is sorted by (count desc, label asc): the same on every rank for the same input.
    """
    if capacity < 1:
        raise ValueError(f"capacity={capacity} must be >= 1")
    acc: dict[int, int] = {}
    total_min = 0
    for labels, counts, _errors in summaries:
        labels = np.asarray(labels, np.int64)
        counts = np.asarray(counts, np.int64)
        m = int(counts.min()) if len(counts) >= capacity and len(counts) else 0
        total_min += m
        for lab, c in zip(labels.tolist(), counts.tolist(), strict=True):
            if c - m > 0:
                acc[lab] = acc.get(lab, 0) + c - m
    if not acc:
        e = np.empty(0, np.int64)
        return e, e.copy(), e.copy()
    labs = np.fromiter(acc.keys(), np.int64, len(acc))
    g = np.fromiter(acc.values(), np.int64, len(acc))
    order = np.lexsort((labs, -g))
    labs, g = labs[order], g[order]
    delta = int(g[capacity]) if len(g) > capacity else 0
    keep = (g - delta) > 0
    keep[capacity:] = False
    d_total = total_min + delta
    labs, g = labs[keep], g[keep] - delta
    return labs, g + d_total, np.full(len(labs), d_total, np.int64)


# ---------------------------------------------------------------------------------- config
@dataclasses.dataclass
class CounterConfig(StrictConfig):
    """Settings of a heavy-hitter counter."""

    policy: str = "space_saving"
    """'random' (random eviction), 'min' (min-eviction), 'space_saving' or 'count_min'."""
    capacity: int = 100
    """B: most labels tracked at once (the adaptive controller may raise it temporarily)."""
    admit_prob: float = 0.05
    """u: probability that a new label replaces a tracked one when the counter is full ('random' and
    'min' only; Space-Saving and Count-Min admit by frequency)."""
    cm_epsilon: float = 0.01
    """Count-Min error: estimate <= true + epsilon * N with probability >= 1 - cm_delta (width e/epsilon)."""
    cm_delta: float = 0.01
    """Count-Min failure probability (depth ln(1/delta))."""
    cm_threshold: int = 2
    """Count-Min admits a new label only when its estimated count is at least this."""
    seed: int = 0
    """Seed of the counter's random draws and of the Count-Min hashes (equal on all ranks)."""

    def validate(self) -> None:
        o = "CounterConfig"
        require(self.policy in POLICIES, o, "policy", self.policy, f"use one of {POLICIES}")
        require(self.capacity >= 1, o, "capacity", self.capacity, "use B >= 1 (e.g. 100)")
        require(0.0 <= self.admit_prob <= 1.0, o, "admit_prob", self.admit_prob, "use a probability in [0, 1], e.g. 0.05")
        require(0.0 < self.cm_epsilon < 1.0, o, "cm_epsilon", self.cm_epsilon, "use a fraction in (0, 1), e.g. 0.01")
        require(0.0 < self.cm_delta < 1.0, o, "cm_delta", self.cm_delta, "use a probability in (0, 1), e.g. 0.01")
        require(self.cm_threshold >= 1, o, "cm_threshold", self.cm_threshold, "use >= 1")
        require(self.seed >= 0, o, "seed", self.seed, "use a non-negative seed")


# ---------------------------------------------------------------------------------- counter
class HeavyHitterCounter:
    """Tracks at most ``capacity`` labels; ``update`` returns, per arrival, whether its label is
    tracked after that arrival (a heavy hitter) and whether it was new (not tracked before)."""

    def __init__(self, config: CounterConfig):
        config.validate()
        self.cfg = config
        self.capacity = config.capacity
        self.admit_prob = config.admit_prob
        self.count: dict[int, int] = {}
        self.error: dict[int, int] = {}
        self.n = 0  # total weight seen (N)
        self.arrivals = 0  # arrivals seen (index of the random draws)
        self.stats = {"admitted": 0, "evicted": 0, "rejected": 0}
        if config.policy == "count_min":
            self.cm_width, self.cm_depth = countmin_dims(config.cm_epsilon, config.cm_delta)
            self.table = np.zeros((self.cm_depth, self.cm_width), np.int64)
        else:
            self.cm_width = self.cm_depth = 0
            self.table = np.zeros((0, 0), np.int64)

    def __len__(self) -> int:
        return len(self.count)

    def __contains__(self, label: int) -> bool:
        return int(label) in self.count

    # -- queries ------------------------------------------------------------------------------
    def count_of(self, labels) -> np.ndarray:
        """(n,) tracked count per label, 0 where untracked."""
        get = self.count.get
        return np.fromiter((get(int(lab), 0) for lab in np.asarray(labels).tolist()), np.int64, len(labels))

    def tracked(self, labels) -> np.ndarray:
        """(n,) bool: label currently tracked."""
        c = self.count
        return np.fromiter((int(lab) in c for lab in np.asarray(labels).tolist()), bool, len(labels))

    def summary(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels, counts, errors) sorted by (count desc, label asc)."""
        labs = np.fromiter(self.count.keys(), np.int64, len(self.count))
        cnt = np.fromiter(self.count.values(), np.int64, len(self.count))
        err = np.fromiter((self.error.get(lab, 0) for lab in labs.tolist()), np.int64, len(labs))
        order = np.lexsort((labs, -cnt))
        return labs[order], cnt[order], err[order]

    def estimate(self, labels) -> np.ndarray:
        """Count-Min: the sketch estimate; otherwise the tracked count (0 when untracked)."""
        if self.cfg.policy == "count_min":
            return countmin_estimate(self.table, countmin_columns(labels, self.cm_depth, self.cm_width, self.cfg.seed))
        return self.count_of(labels)

    # -- updates ------------------------------------------------------------------------------
    def _min_label(self) -> int:
        # smallest count, ties to the smallest label: deterministic on every rank
        return min(self.count.items(), key=lambda kv: (kv[1], kv[0]))[0]

    def _evict(self, label: int) -> None:
        del self.count[label]
        self.error.pop(label, None)
        self.stats["evicted"] += 1

    def update(self, labels, weights=None) -> tuple[np.ndarray, np.ndarray]:
        """Process arrivals in order. Returns ``heavy`` (n,) bool (tracked after its arrival) and
        ``novel`` (n,) bool (not tracked when it arrived)."""
        labels = np.asarray(labels, np.int64).reshape(-1)
        w = np.ones(len(labels), np.int64) if weights is None else np.asarray(weights, np.int64).reshape(-1)
        if len(w) != len(labels):
            raise ValueError(f"weights has {len(w)} entries for {len(labels)} labels; pass one weight per label")
        if len(w) and w.min() < 1:
            raise ValueError(f"weights must be >= 1, got {int(w.min())}")
        heavy = np.zeros(len(labels), bool)
        novel = np.zeros(len(labels), bool)
        policy, seed = self.cfg.policy, self.cfg.seed
        count, error, stats = self.count, self.error, self.stats
        est = None
        if policy == "count_min" and len(labels):
            cols = countmin_columns(labels, self.cm_depth, self.cm_width, seed)
            rows = np.arange(self.cm_depth)
        for i, (lab, wi) in enumerate(zip(labels.tolist(), w.tolist(), strict=True)):
            t = self.arrivals
            self.arrivals += 1
            self.n += wi
            if policy == "count_min":
                c = cols[:, i]
                self.table[rows, c] += wi
                est = int(self.table[rows, c].min())
            if lab in count:
                count[lab] = est if policy == "count_min" else count[lab] + wi
                heavy[i] = True
                continue
            novel[i] = True
            full = len(count) >= self.capacity
            if policy == "count_min":
                if est < self.cfg.cm_threshold:
                    stats["rejected"] += 1
                    continue
                if full:
                    victim = self._min_label()
                    if est <= count[victim]:
                        stats["rejected"] += 1
                        continue
                    self._evict(victim)
                count[lab] = est
            elif not full:
                count[lab] = wi
            elif policy == "space_saving":
                victim = self._min_label()
                m = count[victim]
                self._evict(victim)
                count[lab] = m + wi
                error[lab] = m
            else:  # random / min: gated by u
                if uniform01(seed, t) > self.admit_prob:
                    stats["rejected"] += 1
                    continue
                if policy == "min":
                    victim = self._min_label()
                else:
                    keys = sorted(count)
                    victim = keys[_mix1(seed + 1, t) % len(keys)]
                self._evict(victim)
                count[lab] = wi
            stats["admitted"] += 1
            heavy[i] = True
        return heavy, novel

    def set_capacity(self, capacity: int) -> np.ndarray:
        """Change B_t; when shrinking below the tracked count, evict the smallest counts (returned)."""
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be >= 1")
        self.capacity = int(capacity)
        out = []
        while len(self.count) > self.capacity:
            victim = self._min_label()
            self._evict(victim)
            out.append(victim)
        return np.asarray(out, np.int64)

    def load_summary(self, labels, counts, errors) -> None:
        """Replace the tracked set (e.g. by a merged summary); the sketch and N are kept."""
        self.count = dict(zip(np.asarray(labels, np.int64).tolist(), np.asarray(counts, np.int64).tolist(), strict=True))
        self.error = dict(zip(np.asarray(labels, np.int64).tolist(), np.asarray(errors, np.int64).tolist(), strict=True))

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        labs, cnt, err = self.summary()
        return {"labels": labs, "counts": cnt, "errors": err, "table": self.table.copy(), "n": int(self.n),
                "arrivals": int(self.arrivals), "capacity": int(self.capacity), "admit_prob": float(self.admit_prob),
                **{f"stat_{k}": int(v) for k, v in self.stats.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.load_summary(np.asarray(state.get("labels", np.empty(0, np.int64))),
                          np.asarray(state.get("counts", np.empty(0, np.int64))),
                          np.asarray(state.get("errors", np.empty(0, np.int64))))
        table = state.get("table")
        if table is not None and np.asarray(table).shape == self.table.shape:
            self.table = np.asarray(table, np.int64).copy()
        self.n = int(state.get("n", 0))
        self.arrivals = int(state.get("arrivals", 0))
        self.capacity = int(state.get("capacity", self.cfg.capacity))
        self.admit_prob = float(state.get("admit_prob", self.cfg.admit_prob))
        for k in self.stats:
            self.stats[k] = int(state.get(f"stat_{k}", 0))
