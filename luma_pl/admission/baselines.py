"""Baselines for the admission ablation (docs/design.md section 5), each holding exact vectors in a faiss
``IndexFlatIP`` under an item capacity, with the same ``ingest(ids, x)`` / ``search(q, k)`` /
``nbytes()`` surface and eviction counters:

* ``KeepAll``: every arrival, no budget (the quality ceiling; its RAM is the price).
* ``FullRebuild``: every arrival; the index is rebuilt from scratch after every batch (what a
  static index refreshed per batch costs; same answers as keep-all).
* ``Reservoir``: Vitter's Algorithm R, a uniform sample of the stream of size ``capacity``.
* ``FifoWindow``: the last ``capacity`` arrivals.
* ``HeapFilter``: heap filtering without clustering (SAKR-style): keep the ``capacity`` arrivals
  most similar to a single topic vector (the running mean of the stream); a min-heap on that score.
"""

from __future__ import annotations

import heapq

import faiss
import numpy as np

from luma_pl.admission.heavy_hitters import _mix1


class _FlatStore:
    """Exact vectors by slot + a faiss IndexFlatIP rebuilt lazily at search time when changed."""

    def __init__(self, dim: int):
        self.dim = dim
        self.ids = np.empty(0, np.int64)
        self.vecs = np.empty((0, dim), np.float32)
        self.index = faiss.IndexFlatIP(dim)
        self.dirty = False
        self.evictions = 0
        self.arrivals = 0

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.dirty:
            self.index.reset()
            self.index.add(self.vecs)
            self.dirty = False
        q = np.ascontiguousarray(q, np.float32)
        if len(self.ids) == 0:
            return np.full((len(q), k), -1, np.int64), np.full((len(q), k), -np.inf, np.float32)
        sc, pos = self.index.search(q, k)
        ids = np.where(pos >= 0, self.ids[np.maximum(pos, 0)], -1)
        return ids, np.where(pos >= 0, sc, -np.inf).astype(np.float32)

    def nbytes(self) -> int:
        return int(len(self.ids) * (self.dim * 4 + 8))

    def __len__(self) -> int:
        return len(self.ids)


class KeepAll(_FlatStore):
    def ingest(self, ids: np.ndarray, x: np.ndarray) -> None:
        self.arrivals += len(ids)
        self.ids = np.concatenate([self.ids, np.asarray(ids, np.int64)])
        self.vecs = np.concatenate([self.vecs, np.asarray(x, np.float32)])
        self.index.add(np.ascontiguousarray(x, np.float32))


class FullRebuild(_FlatStore):
    def ingest(self, ids: np.ndarray, x: np.ndarray) -> None:
        self.arrivals += len(ids)
        self.ids = np.concatenate([self.ids, np.asarray(ids, np.int64)])
        self.vecs = np.concatenate([self.vecs, np.asarray(x, np.float32)])
        self.index = faiss.IndexFlatIP(self.dim)  # the whole index, from scratch, every batch
        self.index.add(self.vecs)


class _Capped(_FlatStore):
    def __init__(self, dim: int, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be >= 1 items")
        super().__init__(dim)
        self.capacity = capacity
        self.ids = np.full(capacity, -1, np.int64)
        self.vecs = np.zeros((capacity, dim), np.float32)
        self.size = 0

    def _put(self, slot: int, i: int, v: np.ndarray) -> None:
        if self.ids[slot] >= 0:
            self.evictions += 1
        self.ids[slot] = i
        self.vecs[slot] = v
        self.dirty = True

    def search(self, q, k):
        ids, sc = super().search(q, k)
        return ids, np.where(ids >= 0, sc, -np.inf).astype(np.float32)

    def nbytes(self) -> int:
        return int(self.size * (self.dim * 4 + 8))

    def __len__(self) -> int:
        return self.size


class Reservoir(_Capped):
    """Algorithm R: item t (0-based) replaces a uniform slot with probability capacity/(t+1)."""

    def __init__(self, dim: int, capacity: int, seed: int = 0):
        super().__init__(dim, capacity)
        self.seed = seed
        self.rejected = 0

    def ingest(self, ids, x) -> None:
        for i, v in zip(np.asarray(ids, np.int64).tolist(), np.asarray(x, np.float32), strict=True):
            t = self.arrivals
            self.arrivals += 1
            if self.size < self.capacity:
                self._put(self.size, i, v)
                self.size += 1
                continue
            j = _mix1(self.seed, t) % (t + 1)
            if j < self.capacity:
                self._put(j, i, v)
            else:
                self.rejected += 1


class FifoWindow(_Capped):
    def ingest(self, ids, x) -> None:
        for i, v in zip(np.asarray(ids, np.int64).tolist(), np.asarray(x, np.float32), strict=True):
            self._put(self.arrivals % self.capacity, i, v)
            self.arrivals += 1
            self.size = min(self.capacity, self.size + 1)


class HeapFilter(_Capped):
    """Min-heap of (cos to the running stream mean at arrival, arrival) over ``capacity`` slots."""

    def __init__(self, dim: int, capacity: int):
        super().__init__(dim, capacity)
        self.mean = np.zeros(dim, np.float64)
        self.heap: list[tuple[float, int, int]] = []  # (score, arrival, slot)
        self.rejected = 0

    def ingest(self, ids, x) -> None:
        for i, v in zip(np.asarray(ids, np.int64).tolist(), np.asarray(x, np.float32), strict=True):
            t = self.arrivals
            self.arrivals += 1
            self.mean += (v - self.mean) / (t + 1)
            nm = np.linalg.norm(self.mean)
            s = float(v @ self.mean / nm) if nm > 0 else 0.0
            if self.size < self.capacity:
                self._put(self.size, i, v)
                heapq.heappush(self.heap, (s, t, self.size))
                self.size += 1
            elif s > self.heap[0][0]:
                _, _, slot = heapq.heappop(self.heap)
                self._put(slot, i, v)
                heapq.heappush(self.heap, (s, t, slot))
            else:
                self.rejected += 1
