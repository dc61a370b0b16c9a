"""Warm tier: PQ codes in a faiss IndexIVFPQ (inner product, external ids), plus an exact buffer.

Until ``train_size`` warm vectors exist, they wait in an exact buffer searched by brute force (faiss
needs ~39 points per centroid for clean k-means, for the IVF lists and for each PQ codebook). Then
the IVFPQ trains on the buffer and takes every buffered vector.

zeta_i = ||x_i - x_hat_i||_2 is measured at encode time: ``sa_encode`` gives the list number + PQ
code, ``sa_decode`` rebuilds x_hat from exactly those bytes, and ``add_sa_codes`` stores the same bytes,
so the stored code is the measured one (one encode per vector, no second assignment pass).
Drift: a window of the most recent zetas is compared with the mean zeta of the training set; the tier
says ``needs_retrain`` once the ratio passes the factor (the memory retrains from the originals).
"""

from __future__ import annotations

from collections import deque

import faiss
import numpy as np

from luma_pl.memory.config import MemoryConfig


class WarmTier:
    def __init__(self, cfg: MemoryConfig):
        self.cfg = cfg
        self.dim = cfg.dim
        self.nlist = cfg.resolved_nlist()
        self.train_size = cfg.train_size()
        self.index: faiss.IndexIVFPQ | None = None
        self.ivf_count = 0
        # exact buffer: (b, d) vectors and (b,) ids; row order = arrival order
        self.buf_vecs = np.empty((0, self.dim), dtype=np.float32)
        self.buf_ids = np.empty(0, dtype=np.int64)
        self._buf_pos: dict[int, int] = {}
        self.train_zeta_mean = 0.0
        self._recent = deque(maxlen=cfg.zeta_window)
        self.trainings = 0

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def trained(self) -> bool:
        return self.index is not None

    def __len__(self) -> int:
        return self.ivf_count + len(self.buf_ids)

    def fixed_bytes(self) -> int:
        """Bytes that do not scale with items: coarse centroids, PQ codebooks, list headers."""
        if self.index is None:
            return 0
        ix = self.index
        centroids = self.nlist * self.dim * 4
        codebooks = ix.pq.M * ix.pq.ksub * ix.pq.dsub * 4
        lists = self.nlist * 2 * 24  # two std::vector headers (codes, ids) per list
        tables = ix.precomputed_table.size() * 4
        return int(centroids + codebooks + lists + tables)

    def bytes_per_code(self) -> int:
        """Bytes per IVF item: PQ code + 8-byte id in its list + 4-byte zeta float."""
        code = self.index.code_size if self.index is not None else (self.cfg.pq_m * self.cfg.pq_nbits + 7) // 8
        return int(code + 8 + 4)

    def bytes_per_buffered(self) -> int:
        """Bytes per buffered item: exact vector + id + zeta slot."""
        return self.dim * 4 + 8 + 4

    def nbytes(self) -> int:
        """Logical RAM bytes (what ``serialize_index`` would write, plus buffer and zeta floats).

        std::vector capacity slack inside faiss' inverted lists (at most the list payload again) is
        not visible from Python and not counted.
        """
        return self.fixed_bytes() + self.ivf_count * self.bytes_per_code() + len(self.buf_ids) * self.bytes_per_buffered()

    # -- mutation ------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Add exact (n, d) vectors; return zeta (n,) float32 (0 for items left in the buffer)."""
        if len(ids) == 0:
            return np.empty(0, dtype=np.float32)
        if self.index is None:
            start = len(self.buf_ids)
            self.buf_vecs = np.concatenate([self.buf_vecs, vectors.astype(np.float32)])
            self.buf_ids = np.concatenate([self.buf_ids, ids.astype(np.int64)])
            self._buf_pos.update(zip(ids.tolist(), range(start, start + len(ids)), strict=True))
            return np.zeros(len(ids), dtype=np.float32)
        return self._encode_add(ids, vectors)

    def _encode_add(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        codes = self.index.sa_encode(x)  # (n, code bytes incl. list number)
        zeta = np.linalg.norm(x - self.index.sa_decode(codes), axis=1).astype(np.float32)
        self.index.add_sa_codes(codes, np.ascontiguousarray(ids, dtype=np.int64))
        self.ivf_count += len(ids)
        self._recent.extend(zeta.tolist())
        return zeta

    def ready_to_train(self) -> bool:
        return self.index is None and len(self.buf_ids) >= self.train_size

    def train(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """(Re)train on these exact vectors and encode all of them; return their zeta (n,).

        Callers pass every warm item (the buffer, or for a retrain all warm originals); the tier is
        emptied first so each id ends up in the IVF exactly once.
        """
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFPQ(quantizer, self.dim, self.nlist, self.cfg.pq_m, self.cfg.pq_nbits,
                                 faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = self.cfg.seed
        index.pq.cp.seed = self.cfg.seed
        index.own_fields = True
        index.train(np.ascontiguousarray(vectors, dtype=np.float32))
        index.nprobe = min(self.cfg.nprobe, self.nlist)
        quantizer.this.disown()  # owned by the IVF index now
        self.index = index
        self.ivf_count = 0
        self.buf_vecs = np.empty((0, self.dim), dtype=np.float32)
        self.buf_ids = np.empty(0, dtype=np.int64)
        self._buf_pos = {}
        self._recent.clear()
        zeta = self._encode_add(ids, vectors)
        self.train_zeta_mean = float(zeta.mean()) if len(zeta) else 0.0
        self.trainings += 1
        return zeta

    def needs_retrain(self) -> bool:
        """Mean zeta of the recent window (full) exceeds factor x the mean at training time."""
        if self.index is None or len(self._recent) < self._recent.maxlen or self.train_zeta_mean <= 0:
            return False
        return float(np.mean(self._recent)) > self.cfg.retrain_drift_factor * self.train_zeta_mean

    def remove(self, ids: np.ndarray, in_buffer: np.ndarray) -> None:
        """Remove ids; ``in_buffer`` (n,) bool says which ones sit in the exact buffer."""
        buf = ids[in_buffer]
        if len(buf):
            drop = np.array([self._buf_pos[int(i)] for i in buf], dtype=np.int64)
            keep = np.ones(len(self.buf_ids), dtype=bool)
            keep[drop] = False
            self.buf_vecs = self.buf_vecs[keep]
            self.buf_ids = self.buf_ids[keep]
            self._buf_pos = {int(i): p for p, i in enumerate(self.buf_ids.tolist())}
        ivf = np.ascontiguousarray(ids[~in_buffer], dtype=np.int64)
        if len(ivf):
            removed = self.index.remove_ids(faiss.IDSelectorBatch(ivf))
            if removed != len(ivf):
                raise RuntimeError(f"warm IVF removed {removed} of {len(ivf)} ids: bookkeeping is broken")
            self.ivf_count -= len(ivf)

    def buffer_vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.buf_vecs[[self._buf_pos[int(i)] for i in ids]]

    # -- search --------------------------------------------------------------------------------
    def search_ivf(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """PQ-approximate top-k: scores (Q, k), ids (Q, k); -inf / -1 padded."""
        nq = len(queries)
        if self.index is None or self.ivf_count == 0 or k == 0:
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        d, i = self.index.search(queries, k)
        if (i >= 0).all():
            return d, i
        return np.where(i >= 0, d, -np.inf).astype(np.float32), i

    def search_buffer(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact brute-force top-k over the buffer: scores (Q, k), ids (Q, k); -inf / -1 padded."""
        nq, b = len(queries), len(self.buf_ids)
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        ids = np.full((nq, k), -1, dtype=np.int64)
        kk = min(k, b)
        if kk == 0:
            return scores, ids
        s = queries @ self.buf_vecs.T  # (Q, b)
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < b else np.broadcast_to(np.arange(b), (nq, b))
        scores[:, :kk] = np.take_along_axis(s, top, axis=1)
        ids[:, :kk] = self.buf_ids[top]
        return scores, ids

    # -- persistence ---------------------------------------------------------------------------
    def index_bytes(self) -> np.ndarray:
        if self.index is None:
            return np.empty(0, dtype=np.uint8)
        return faiss.serialize_index(self.index)

    def restore(self, blob: np.ndarray, buf_ids: np.ndarray, buf_vecs: np.ndarray, recent: np.ndarray,
                train_zeta_mean: float, trainings: int) -> None:
        if len(blob):
            index = faiss.deserialize_index(np.asarray(blob, dtype=np.uint8))  # already downcast, owning
            index.nprobe = min(self.cfg.nprobe, index.nlist)
            self.index = index
            self.nlist = index.nlist
            self.ivf_count = int(index.ntotal)
        self.buf_ids = buf_ids.astype(np.int64)
        self.buf_vecs = buf_vecs.astype(np.float32).reshape(-1, self.dim)
        self._buf_pos = {int(i): p for p, i in enumerate(self.buf_ids.tolist())}
        self._recent.clear()
        self._recent.extend(recent.tolist())
        self.train_zeta_mean = float(train_zeta_mean)
        self.trainings = int(trainings)
