"""Hot tier: exact vectors in RAM behind a graph index (HNSW) or an exact flat index.

faiss HNSW cannot remove ids, so removal sets a tombstone: the row stays in the graph (and in the
byte count) and is filtered out at search time by an ``IDSelectorBitmap`` of live rows passed through
``SearchParametersHNSW(sel=...)``. Once tombstones exceed ``tombstone_fraction`` of the rows, the graph
is rebuilt from the live rows' exact vectors, which the flat storage inside the index already holds
(so no second copy of the vectors is kept). Flat backends rebuild on every removal: a flat "rebuild"
is a memcpy.
"""

from __future__ import annotations

import faiss
import numpy as np


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a CUDA device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class HotTier:
    """Rows are internal positions in the faiss index; ``ids[row]`` is the external id."""

    def __init__(self, dim: int, backend: str = "hnsw", m: int = 32, ef_construction: int = 80,
                 ef_search: int = 64, tombstone_fraction: float = 0.2, item_bytes: int = 0):
        if backend == "gpu_flat" and not gpu_available():
            raise ValueError("hot_backend='gpu_flat' needs faiss with GPU support and a CUDA device; use 'hnsw'")
        self.dim, self.backend, self.m = dim, backend, m
        self.ef_construction, self.ef_search = ef_construction, ef_search
        self.tombstone_fraction = tombstone_fraction
        self.item_bytes = int(item_bytes)  # bookkeeping the owner charges per live item (see nbytes)
        self._gpu_res = faiss.StandardGpuResources() if backend == "gpu_flat" else None
        self.index = self._new_index()
        self.ids = np.empty(0, dtype=np.int64)  # (rows,) external id per row
        self.live = np.empty(0, dtype=bool)  # (rows,) False = tombstone
        # id -> row of live ids, -1 elsewhere: a dense array indexed by id (ids are the memory's keys,
        # small non-negative ints), so every lookup is vectorised; grown by doubling
        self._row = np.full(0, -1, dtype=np.int64)
        self._live_count = 0
        self.rebuilds = 0
        self._bitmap: np.ndarray | None = None  # packed live bits, kept alive while faiss reads it

    def _new_index(self):
        if self.backend == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
            return index
        if self.backend == "flat":
            return faiss.IndexFlatIP(self.dim)
        return faiss.GpuIndexFlatIP(self._gpu_res, self.dim)

    # -- sizes ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._live_count

    @property
    def row_of(self) -> dict[int, int]:
        """External id -> row of every live id (built on demand; for audits and tests)."""
        rows = np.flatnonzero(self.live)
        return dict(zip(self.ids[rows].tolist(), rows.tolist(), strict=True))

    def live_ids(self) -> np.ndarray:
        """(live,) ids in row order."""
        return self.ids[self.live]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """(n,) rows of live ids; KeyError naming the first id that is not live here."""
        ids = np.asarray(ids, dtype=np.int64)
        inside = ids < len(self._row)
        rows = np.where(inside, self._row[np.where(inside, ids, 0)], -1)
        if (rows < 0).any():
            raise KeyError(f"id {int(ids[rows < 0][0])} is not live in the hot tier")
        return rows

    def _set_rows(self, ids: np.ndarray, rows: np.ndarray | int) -> None:
        if len(ids) and ids.max() >= len(self._row):
            grown = np.full(max(int(ids.max()) + 1, 2 * len(self._row)), -1, dtype=np.int64)
            grown[: len(self._row)] = self._row
            self._row = grown
        self._row[ids] = rows

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def tombstones(self) -> int:
        return self.rows - self._live_count

    def nbytes(self) -> int:
        """RAM bytes: vectors (all rows, tombstones included) + graph links + id/liveness arrays.

        Graph bytes are read from the HNSW structure itself (neighbor table int32, per-node offsets
        size_t, levels int32), so upper levels are counted exactly, not estimated. Not counted: the
        id -> row array (8 bytes per key ever seen, charged by the memory as bookkeeping), std::vector
        spare capacity inside faiss (the graph is rebuilt from scratch on compaction, the storage grows
        by doubling: at most the payload again), the GPU copy's device memory for 'gpu_flat'.
        """
        total = self.rows * (self.dim * 4 + 8 + 1)  # vector + external id + live flag
        if self.backend == "hnsw":
            h = self.index.hnsw
            total += h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4
        return int(total + self._live_count * self.item_bytes)  # + the owner's per-item bookkeeping

    def bytes_per_new_row(self) -> float:
        """Expected bytes one more row adds (vector + links at the graph's average degree)."""
        base = self.dim * 4 + 8 + 1 + self.item_bytes
        if self.backend != "hnsw":
            return float(base)
        if self.rows:
            h = self.index.hnsw
            links = (h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4) / self.rows
        else:  # level 0 has 2M links; the levels above add ~M/(M-1) more on average
            links = (2 * self.m + self.m / (self.m - 1)) * 4 + 12
        return float(base + links)

    # -- mutation ------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (n,) ids with their (n, d) exact vectors; ids must not be live here."""
        if len(ids) == 0:
            return
        start = self.rows
        ids = np.asarray(ids, dtype=np.int64)
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.ids = np.concatenate([self.ids, ids])
        self.live = np.concatenate([self.live, np.ones(len(ids), dtype=bool)])
        self._set_rows(ids, np.arange(start, start + len(ids)))
        self._live_count += len(ids)
        self._bitmap = None

    def remove(self, ids: np.ndarray) -> None:
        """Tombstone ids (they must be live here); rebuild once tombstones pass the threshold."""
        if len(ids) == 0:
            return
        ids = np.asarray(ids, dtype=np.int64)
        rows = self.rows_of(ids)
        self.live[rows] = False
        self._row[ids] = -1
        self._live_count -= len(ids)
        self._bitmap = None
        if self.backend != "hnsw" or self.tombstones > self.tombstone_fraction * self.rows:
            self.compact()

    def compact(self) -> None:
        """Rebuild the index from the live rows only (same order, so the result is deterministic)."""
        if self.tombstones == 0:
            return
        keep = np.flatnonzero(self.live)
        vectors = self.all_vectors()[keep]
        ids = self.ids[keep]
        self.index = self._new_index()
        self.ids = np.empty(0, dtype=np.int64)
        self.live = np.empty(0, dtype=bool)
        self._live_count = 0
        self.add(ids, vectors)  # rewrites the rows of every live id
        self.rebuilds += 1

    # -- reading -------------------------------------------------------------------------------
    def all_vectors(self) -> np.ndarray:
        """(rows, d) exact vectors of every row (tombstones included); a view where possible."""
        if self.rows == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        if self.backend == "gpu_flat":
            return self.index.reconstruct_n(0, self.rows)
        storage = self.index.storage if self.backend == "hnsw" else self.index
        flat = faiss.downcast_index(storage)
        return faiss.rev_swig_ptr(flat.get_xb(), self.rows * self.dim).reshape(self.rows, self.dim)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """(n, d) exact vectors of live ids."""
        return np.array(self.all_vectors()[self.rows_of(ids)], dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over live rows: scores (Q, kk) float32 and ids (Q, kk) int64 with kk = min(k, live),
        -1 / -inf where the index found fewer."""
        nq = len(queries)
        kk = min(k, self._live_count)
        if kk == 0 or nq == 0:
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        if self.tombstones == 0:
            if self.backend == "hnsw" and self.index.hnsw.efSearch < kk:
                d, i = self.index.search(queries, kk, params=faiss.SearchParametersHNSW(efSearch=kk))
            else:
                d, i = self.index.search(queries, kk)
        else:  # only HNSW keeps tombstones; filter them with a bitmap of live rows
            if self._bitmap is None:
                self._bitmap = np.packbits(self.live, bitorder="little")
            sel = faiss.IDSelectorBitmap(self.rows, faiss.swig_ptr(self._bitmap))
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.ef_search, kk))
            d, i = self.index.search(queries, kk, params=params)
        found = i >= 0
        if found.all():
            return d, self.ids[i]
        return np.where(found, d, -np.inf).astype(np.float32), np.where(found, self.ids[np.where(found, i, 0)], -1)

    # -- persistence ---------------------------------------------------------------------------
    def index_bytes(self) -> np.ndarray:
        index = faiss.index_gpu_to_cpu(self.index) if self.backend == "gpu_flat" else self.index
        return faiss.serialize_index(index)

    def restore(self, blob: np.ndarray, ids: np.ndarray, live: np.ndarray, rebuilds: int) -> None:
        index = faiss.deserialize_index(np.asarray(blob, dtype=np.uint8))
        if self.backend == "gpu_flat":
            index = faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
        elif self.backend == "hnsw":
            index.hnsw.efSearch = self.ef_search
            index.hnsw.efConstruction = self.ef_construction
        if index.ntotal != len(ids) or len(live) != len(ids):
            raise ValueError(f"hot index holds {index.ntotal} rows but {len(ids)} ids were saved")
        self.index = index
        self.ids = ids.astype(np.int64)
        self.live = live.astype(bool)
        self._row = np.full(0, -1, dtype=np.int64)
        rows = np.flatnonzero(self.live)
        self._set_rows(self.ids[rows], rows)
        self._live_count = len(rows)
        self.rebuilds = int(rebuilds)
        self._bitmap = None
