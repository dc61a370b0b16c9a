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
                 ef_search: int = 64, tombstone_fraction: float = 0.2):
        if backend == "gpu_flat" and not gpu_available():
            raise ValueError("hot_backend='gpu_flat' needs faiss with GPU support and a CUDA device; use 'hnsw'")
        self.dim, self.backend, self.m = dim, backend, m
        self.ef_construction, self.ef_search = ef_construction, ef_search
        self.tombstone_fraction = tombstone_fraction
        self._gpu_res = faiss.StandardGpuResources() if backend == "gpu_flat" else None
        self.index = self._new_index()
        self.ids = np.empty(0, dtype=np.int64)  # (rows,) external id per row
        self.live = np.empty(0, dtype=bool)  # (rows,) False = tombstone
        self.row_of: dict[int, int] = {}  # external id -> row (live rows only)
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
        return len(self.row_of)

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def tombstones(self) -> int:
        return self.rows - len(self.row_of)

    def nbytes(self) -> int:
        """RAM bytes: vectors (all rows, tombstones included) + graph links + id/liveness arrays.

        Graph bytes are read from the HNSW structure itself (neighbor table int32, per-node offsets
        size_t, levels int32), so upper levels are counted exactly, not estimated.
        """
        total = self.rows * (self.dim * 4 + 8 + 1)  # vector + external id + live flag
        if self.backend == "hnsw":
            h = self.index.hnsw
            total += h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4
        total += len(self.row_of) * 0  # the dict is bookkeeping shared with the memory, counted there
        return int(total)

    def bytes_per_new_row(self) -> float:
        """Expected bytes one more row adds (vector + links at the graph's average degree)."""
        base = self.dim * 4 + 8 + 1
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
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.ids = np.concatenate([self.ids, ids.astype(np.int64)])
        self.live = np.concatenate([self.live, np.ones(len(ids), dtype=bool)])
        self.row_of.update(zip(ids.tolist(), range(start, start + len(ids)), strict=True))
        self._bitmap = None

    def remove(self, ids: np.ndarray) -> None:
        """Tombstone ids (they must be live here); rebuild once tombstones pass the threshold."""
        rows = [self.row_of.pop(int(i)) for i in ids]
        self.live[rows] = False
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
        self.row_of = {}
        self.add(ids, vectors)
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
        rows = np.array([self.row_of[int(i)] for i in ids], dtype=np.int64)
        return np.array(self.all_vectors()[rows], dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over live rows: scores (Q, kk) float32 and ids (Q, kk) int64 with kk = min(k, live),
        -1 / -inf where the index found fewer."""
        nq = len(queries)
        kk = min(k, len(self.row_of))
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
        self.row_of = {int(i): r for r, i in enumerate(self.ids.tolist()) if self.live[r]}
        self.rebuilds = int(rebuilds)
        self._bitmap = None
