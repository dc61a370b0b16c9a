"""Bounded state a long replay keeps about the events it has seen.

``QueryReservoir``: earlier events' queries for the "earlier events" (retention) questions, a
uniform sample of every event seen so far in fixed memory. Algorithm R (Vitter 1985): the t-th
arrival (0-based) takes slot t while t < capacity, else a slot drawn uniformly from [0, t] and is
kept only if that slot is < capacity. Proof that every arrival is in the reservoir with probability
capacity / n after n arrivals: by induction, arrival t enters with probability capacity / (t + 1),
and each later arrival u > t evicts a given slot with probability 1 / (u + 1), so t survives with
(capacity / (t + 1)) * prod_{u=t+1}^{n-1} u / (u + 1) = capacity / n. A draw from the reservoir is
therefore a uniform draw over all earlier events, at a per-batch cost and RAM that do not grow
with the stream (the old pool re-concatenated every earlier query on every batch).

The random draws come from the caller's generator: every rank passes the same seeded generator in
the same order, so every rank keeps the same reservoir (the evaluator's replicated state).

``SeenIds``: the set of event ids replayed so far, exact, at 8 bytes per id (a sorted int64 array
plus a small unsorted tail merged when it grows past an eighth of the sorted part), instead of a
Python set's ~70 bytes per id. Membership of a batch is one ``searchsorted``. ``first_arrivals`` is the one rule for a replayed
event, used by training (``HeavyHitterAdmission``) and evaluation (``StreamEvaluator``) alike: an id
already seen, or seen earlier in the same batch, is a replay (a second epoch over the same shards, a
stream that repeats an event, two shards that overlap); it is skipped and counted, never inserted twice.
"""

from __future__ import annotations

import numpy as np


class QueryReservoir:
    """A uniform sample of at most ``capacity`` (query vector, event id) rows of a stream."""

    def __init__(self, capacity: int, dim: int) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity={capacity!r}: use an int >= 1 (rows of earlier queries kept)")
        self.capacity = capacity
        self.vectors = np.zeros((0, dim), np.float32)  # grown to capacity on demand
        self.ids = np.zeros(0, np.int64)
        self.seen = 0
        """Rows offered so far (kept or not)."""

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def offer(self, vectors: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> None:
        """Offer rows (m, dim) with their ids (m,) in stream order."""
        m = len(ids)
        if m == 0:
            return
        t = self.seen + np.arange(m, dtype=np.int64)
        slot = np.where(t < self.capacity, t, rng.integers(0, t + 1))
        keep = slot < self.capacity
        rows, slot = np.flatnonzero(keep), slot[keep]
        # two arrivals of one batch drawing the same slot: the later one wins, as in sequential R
        last = len(slot) - 1 - np.unique(slot[::-1], return_index=True)[1]
        rows, slot = rows[last], slot[last]
        need = min(self.capacity, self.seen + m)
        if need > len(self.ids):
            grown = min(self.capacity, max(need, 2 * len(self.ids)))
            v = np.zeros((grown, self.vectors.shape[1]), np.float32)
            v[: len(self.ids)] = self.vectors
            i = np.zeros(grown, np.int64)
            i[: len(self.ids)] = self.ids
            self.vectors, self.ids = v, i
        self.vectors[slot] = vectors[rows]
        self.ids[slot] = ids[rows]
        self.seen += m

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``min(n, len(self))`` rows drawn uniformly with replacement: (vectors, ids)."""
        size = len(self)
        pick = rng.integers(0, size, size=min(n, size)) if size else np.zeros(0, np.int64)
        return self.vectors[pick], self.ids[pick]

    def state_dict(self) -> dict:
        n = len(self)
        return {"vectors": self.vectors[:n].copy(), "ids": self.ids[:n].copy(), "seen": int(self.seen)}


class SeenIds:
    """Exact set of int64 ids, 8 bytes per id, kept as a few sorted runs (a log-structured merge).

    ``add`` appends the batch as a sorted run and merges the two newest runs while the newer one is
    at least half the older one's size, so run sizes grow geometrically: at most ~log2(n / batch)
    runs, and each id is merged O(log n) times over its life. ``contains`` is one binary search per
    run, so the per-batch cost grows with log(n), not n (one unsorted tail of up to n / 8 ids
    scanned with ``np.isin`` cost 1 ms per 1024-id batch at the start of a 1M-event stream and 15 ms
    at its end: ``bench/bench_seen_ids.py``)."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []  # sorted, unique, disjoint; sizes non-increasing

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs)

    @property
    def run_count(self) -> int:
        """Sorted runs held now (at most ~log2(len / smallest batch) + 1)."""
        return len(self._runs)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """(n,) bool: which ids were added before."""
        ids = np.asarray(ids, np.int64)
        found = np.zeros(len(ids), bool)
        for run in self._runs:
            pos = np.minimum(np.searchsorted(run, ids), len(run) - 1)
            found |= run[pos] == ids
        return found

    def first_arrivals(self, ids: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
        """(n,) bool: the ``candidates`` (default: all) whose id is seen for the first time, neither
        before this batch nor earlier in it; those are added. The others are replays."""
        ids = np.asarray(ids, np.int64)
        cand = np.ones(len(ids), bool) if candidates is None else np.asarray(candidates, bool).copy()
        if not len(ids):
            return cand
        order = np.flatnonzero(cand)
        _, first = np.unique(ids[order], return_index=True)
        fresh = np.zeros(len(ids), bool)
        fresh[order[first]] = True
        fresh &= ~self.contains(ids)
        self._append(ids[fresh])  # unique and not present: no second lookup
        return fresh

    def state_dict(self) -> dict:
        return {"ids": self.sorted()}

    def load_state_dict(self, state: dict) -> None:
        ids = np.asarray(state.get("ids", np.zeros(0, np.int64)), np.int64).reshape(-1)
        self._runs = [np.unique(ids)] if len(ids) else []

    def sorted(self) -> np.ndarray:
        """Every id added, sorted (a copy); the runs are merged into one."""
        if len(self._runs) > 1:
            self._runs = [np.unique(np.concatenate(self._runs))]
        return self._runs[0].copy() if self._runs else np.zeros(0, np.int64)

    def add(self, ids: np.ndarray) -> None:
        """Add ids; those already present are skipped (the runs stay disjoint, ``len`` exact)."""
        ids = np.unique(np.asarray(ids, np.int64))
        self._append(ids[~self.contains(ids)] if self._runs else ids)

    def _append(self, ids: np.ndarray) -> None:
        """Append unique ids not yet present as a run, then merge runs of comparable size."""
        if not len(ids):
            return
        self._runs.append(np.sort(ids))
        while len(self._runs) > 1 and 2 * len(self._runs[-1]) >= len(self._runs[-2]):
            newer = self._runs.pop()  # disjoint sorted runs: a linear merge, no re-sort
            older = self._runs[-1]
            self._runs[-1] = np.insert(older, np.searchsorted(older, newer), newer)
