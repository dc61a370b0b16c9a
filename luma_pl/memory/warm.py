"""Warm tier: PQ codes in a faiss IndexIVFPQ (inner product, external ids), plus an exact buffer.

Until ``train_size`` warm vectors exist, they wait in an exact buffer searched by brute force (faiss
needs ~39 points per centroid for clean k-means, for the IVF lists and for each PQ codebook). Then
the IVFPQ trains on the buffer and takes every buffered vector.

zeta_i = ||x_i - x_hat_i||_2 is measured at encode time: ``sa_encode`` gives the list number + PQ
code, ``sa_decode`` rebuilds x_hat from exactly those bytes, and ``add_sa_codes`` stores the same bytes,
so the stored code is the measured one (one encode per vector, no second assignment pass).
Drift: a window of the most recent zetas is compared with the mean zeta of the training set; the tier
says ``needs_retrain`` once the ratio passes the factor (the memory retrains from the originals).

Bytes (``nbytes``) include the spare capacity of faiss' inverted lists: ``add_sa_codes`` appends one
entry at a time, so each list's std::vectors (codes and ids) grow by doubling and never shrink on
removal; the tier tracks every list's high-water size since training and charges next_pow2 of it.
The exact buffer is a preallocated array whose spare rows are charged too.

PQ scores (measured at N=100k, d=512, clustered, PQ64x8, by_residual=True): unbiased on average
(PQ score - exact score over random pairs: mean +0.0000, sd 0.014), but the top-k *selected* by PQ
score are inflated (+0.040 on average at k=10: the winner's curse of ranking noisy scores), so without
rescoring warm hits outrank exact hot hits they should lose to, and ranking inside the warm tier is
noise-limited (Recall@10 0.365 at every nprobe from 8 to 128). Exact rescoring of oversample*k
candidates removes both: oversample 4 -> 0.871, 8 -> 0.997, 10 -> 1.000, at any nprobe >= 8. Hence
the default oversample (10 up to 150k warm items, growing with the warm size: 60 at 900k gives 0.987 at
N=1M). No correction is applied to PQ scores: subtracting alpha * zeta_i / sqrt(d) (the item's expected
score-noise scale) before merging with exact hot scores gained at most +0.03 Recall@10 (N=50k, hot 10%:
0.428 -> 0.450 at alpha 2; hot 25%: 0.423 -> 0.454) and lost at alpha 4 (0.412 / 0.373): the loss is
PQ noise inside the warm ranking, not the merge, and only rescoring fixes it.

Generations (``MemoryConfig.warm_generations``): a drift retraining does not re-encode the tier.
It installs the new quantizers as a new *generation* (an IVFPQ of its own) that encodes every
arrival from then on, while the older generations keep their codes and keep serving; search asks
every generation (nprobe lists each, so the codes scanned are the same share of the tier as with one
index) and merges the candidates, which rescoring makes exact anyway. Past ``warm_generations``
the smallest older generation is merged into the newest: its items are re-encoded from the
originals. Re-encoding the whole tier at each retraining made a long stream quadratic (every
retraining touched every warm item); with generations an item is re-encoded only when its
generation is merged. Each generation's quantizers, lists and tables are in ``fixed_bytes``.
The pq_floor bound stays valid: an item its generation did not return has PQ score <= that
generation's k-th, which is <= the merged k-th.

GPU (``warm_backend='gpu_ivfpq'``): the CPU IndexIVFPQ stays the source of truth (encoding, zeta,
ids, removal); a ``GpuIndexIVFPQ`` copy answers searches and is refreshed from it (``copyFrom``)
before the first search after any change. Its device memory is not in the RAM budget.
"""

from __future__ import annotations

import dataclasses
from collections import deque

import faiss
import numpy as np

from luma_pl.memory.config import MemoryConfig
from luma_pl.memory.retrain import new_ivfpq, train_ivfpq


@dataclasses.dataclass
class Generation:
    """One IVFPQ of the warm tier: its codes were made with its own quantizers."""

    index: faiss.IndexIVFPQ
    count: int = 0  # codes held
    list_cap: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))  # per list
    gpu: object | None = None  # GpuIndexIVFPQ copy; None = stale

    def keys(self) -> np.ndarray:
        inv = self.index.invlists
        parts = [faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy()
                 for i in range(inv.nlist) if inv.list_size(i)]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def fixed_bytes(self, dim: int) -> int:
        """Coarse centroids, PQ codebooks, list headers and precomputed tables."""
        ix = self.index
        return int(ix.nlist * dim * 4 + ix.pq.M * ix.pq.ksub * ix.pq.dsub * 4 + ix.nlist * 2 * 64
                   + ix.precomputed_table.size() * 4)


class WarmTier:
    def __init__(self, cfg: MemoryConfig, item_bytes: int = 0):
        self.cfg = cfg
        self.item_bytes = int(item_bytes)  # bookkeeping the owner charges per live item
        self.dim = cfg.dim
        self.nlist = cfg.resolved_nlist()
        self.train_size = cfg.train_size()
        self.gens: list[Generation] = []  # oldest first; the last one encodes new arrivals
        self.ivf_count = 0
        self.merges = 0  # generations re-encoded into the newest
        self.worker_bytes = 0  # set by the memory while a background retraining runs (see nbytes)
        self._gen_of = np.full(0, -1, dtype=np.int16)  # key -> generation position (-1: none)
        # exact buffer: (b, d) vectors and (b,) ids; row order = arrival order
        self._buf = np.empty((0, self.dim), dtype=np.float32)  # (capacity, d); first _nbuf rows used
        self._buf_id = np.empty(0, dtype=np.int64)
        self._nbuf = 0
        self.train_zeta_mean = 0.0
        self._recent = deque(maxlen=cfg.zeta_window)
        self.trainings = 0
        self.gpu = cfg.warm_backend == "gpu_ivfpq"
        if self.gpu and not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
            raise ValueError("warm_backend='gpu_ivfpq' needs faiss with GPU support and a CUDA device; use 'ivfpq'")
        self._gpu_res = faiss.StandardGpuResources() if self.gpu else None

    @property
    def buf_vecs(self) -> np.ndarray:
        """(b, d) exact buffered vectors (a view)."""
        return self._buf[: self._nbuf]

    @property
    def buf_ids(self) -> np.ndarray:
        """(b,) buffered ids in arrival order (a view)."""
        return self._buf_id[: self._nbuf]

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def index(self) -> faiss.IndexIVFPQ | None:
        """The newest generation's index (the one that encodes), None before the first training."""
        return self.gens[-1].index if self.gens else None

    @property
    def trained(self) -> bool:
        return bool(self.gens)

    def __len__(self) -> int:
        return self.ivf_count + len(self.buf_ids)

    def fixed_bytes(self) -> int:
        """Bytes that do not scale with items, per generation: coarse centroids, PQ codebooks, list
        headers (two MaybeOwnedVector per list), precomputed tables."""
        return int(sum(g.fixed_bytes(self.dim) for g in self.gens))

    def list_spare_bytes(self) -> int:
        """Spare capacity of the inverted lists: (capacity - size) x (code + 8-byte id) bytes."""
        return int(sum((int(g.list_cap.sum()) - g.count) * (g.index.code_size + 8) for g in self.gens))

    def bytes_per_code(self) -> int:
        """Bytes per IVF item: PQ code + 8-byte id in its list + 4-byte zeta float."""
        code = self.index.code_size if self.index is not None else (self.cfg.pq_m * self.cfg.pq_nbits + 7) // 8
        return int(code + 8 + 4 + self.item_bytes)

    def bytes_per_buffered(self) -> int:
        """Bytes per buffered item: exact vector + id + zeta slot (+ the owner's per-item bookkeeping)."""
        return self.dim * 4 + 8 + 4 + self.item_bytes

    def nbytes(self) -> int:
        """RAM bytes: fixed structures + per code (code, id, zeta) + lists' spare capacity + the
        buffer's allocated rows (vector + id + zeta slot each) + ``worker_bytes`` (what a background
        retraining holds in its process: the sample and two indexes' quantizers)."""
        spare_rows = len(self._buf_id) - self._nbuf
        return (self.fixed_bytes() + self.ivf_count * self.bytes_per_code() + self.list_spare_bytes()
                + self._nbuf * self.bytes_per_buffered() + spare_rows * (self.dim * 4 + 8) + self.worker_bytes)

    # -- mutation ------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Add exact (n, d) vectors; return zeta (n,) float32 (0 for items left in the buffer)."""
        if len(ids) == 0:
            return np.empty(0, dtype=np.float32)
        if not self.gens:
            self._buf_reserve(self._nbuf + len(ids))
            self._buf[self._nbuf : self._nbuf + len(ids)] = vectors
            self._buf_id[self._nbuf : self._nbuf + len(ids)] = ids
            self._nbuf += len(ids)
            return np.zeros(len(ids), dtype=np.float32)
        return self._encode_add(ids, vectors)

    def _buf_reserve(self, need: int) -> None:
        """Grow the buffer to hold ``need`` rows: doubling (amortised O(1) per row), but never past
        the training size, and never past what the warm byte budget can pay for (spare rows count)."""
        cap = len(self._buf_id)
        if need <= cap:
            return
        by_bytes = (self.cfg.warm_max_bytes - self.fixed_bytes() - need * self.item_bytes) // (self.dim * 4 + 8)
        new = max(need, min(2 * cap, max(self.train_size, 1024), int(by_bytes)))
        buf = np.empty((new, self.dim), dtype=np.float32)
        buf[: self._nbuf] = self._buf[: self._nbuf]
        ids = np.full(new, -1, dtype=np.int64)
        ids[: self._nbuf] = self._buf_id[: self._nbuf]
        self._buf, self._buf_id = buf, ids

    def _set_buffer(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the buffer with exactly these rows (no spare capacity)."""
        self._buf = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim).copy()
        self._buf_id = np.asarray(ids, dtype=np.int64).copy()
        self._nbuf = len(self._buf_id)

    def _encode_add(self, ids: np.ndarray, vectors: np.ndarray, record: bool = True) -> np.ndarray:
        """Encode into the newest generation; ``record``: count the zetas in the drift window (not
        for a merge, whose items are not arrivals)."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        g = self.gens[-1]
        codes = g.index.sa_encode(x)  # (n, code bytes incl. list number)
        zeta = np.linalg.norm(x - g.index.sa_decode(codes), axis=1).astype(np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        g.index.add_sa_codes(codes, ids)
        g.count += len(ids)
        self.ivf_count += len(ids)
        self._set_gen(ids, len(self.gens) - 1)
        self._grow_list_caps(g, codes)
        if record:
            self._recent.extend(zeta.tolist())
        g.gpu = None
        return zeta

    def _set_gen(self, keys: np.ndarray, gen: int) -> None:
        if len(keys) and keys.max() >= len(self._gen_of):
            grown = np.full(max(int(keys.max()) + 1, 2 * len(self._gen_of)), -1, dtype=np.int16)
            grown[: len(self._gen_of)] = self._gen_of
            self._gen_of = grown
        self._gen_of[keys] = gen

    @staticmethod
    def _grow_list_caps(g: Generation, codes: np.ndarray) -> None:
        """Update each touched list's capacity: next power of two of its size (one Python call per
        touched list, never per item)."""
        nb = g.index.coarse_code_size()
        lists = np.zeros(len(codes), dtype=np.int64)
        for b in range(nb):  # little-endian list number in the first bytes of each code
            lists |= codes[:, b].astype(np.int64) << (8 * b)
        inv = g.index.invlists
        touched = np.unique(lists)
        sizes = np.fromiter((inv.list_size(int(i)) for i in touched), dtype=np.int64, count=len(touched))
        cap = g.list_cap[touched]
        # one entry at a time: a full vector of capacity c reallocates to 2c (0 -> 1)
        base = np.maximum(cap, 1)
        doublings = np.ceil(np.log2(np.maximum(sizes, 1) / base)).clip(min=0).astype(np.int64)
        g.list_cap[touched] = np.where(sizes > cap, base << doublings, cap)

    def ready_to_train(self) -> bool:
        return not self.gens and len(self.buf_ids) >= self.train_size

    def train_sample(self, n: int) -> np.ndarray:
        """Sorted positions of the (seeded) training sample among n candidate rows: all of them when
        n <= train_size, else train_size of them (k-means on train_size points, as documented; a bulk
        insert of 900k would otherwise train on faiss' cap of 256 points per centroid)."""
        if n <= self.train_size:
            return np.arange(n)
        return np.sort(np.random.default_rng(self.cfg.seed).choice(n, self.train_size, replace=False))

    def new_index(self) -> faiss.IndexIVFPQ:
        c = self.cfg
        return new_ivfpq(self.dim, self.nlist, c.pq_m, c.pq_nbits, c.pq_train_iterations, c.seed)

    def retrain_params(self) -> dict:
        """The parameters of a drift retraining (``retrain.train_ivfpq``; JSON for the worker)."""
        c = self.cfg
        return {"dim": self.dim, "nlist": self.nlist, "pq_m": c.pq_m, "pq_nbits": c.pq_nbits,
                "niter": c.pq_train_iterations, "seed": c.seed, "mode": c.retrain_mode,
                "coarse_iterations": c.retrain_coarse_iterations, "pq_iterations": c.retrain_pq_iterations}

    def retrained_index(self, vectors: np.ndarray) -> faiss.IndexIVFPQ:
        """A drift retraining in line: ``cfg.retrain_mode`` on the seeded ``train_sample`` of these
        vectors, starting from the index in use (the first training, at buffer fill, is ``train``'s
        full one)."""
        sample = np.ascontiguousarray(vectors[self.train_sample(len(vectors))], dtype=np.float32)
        return train_ivfpq(sample, **self.retrain_params(), base=self.index)

    def train(self, ids: np.ndarray, vectors: np.ndarray, trained: faiss.IndexIVFPQ | None = None) -> np.ndarray:
        """(Re)train on these exact vectors (the seeded ``train_sample`` of them) and encode all of
        them; return their zeta (n,). ``trained``: an index already trained elsewhere (a background
        retraining) to install instead.

        Callers pass every warm item (the buffer, or for a retrain all warm originals); the tier is
        emptied first so each id ends up in the IVF exactly once.
        """
        if trained is None:
            index = self.new_index()
            index.train(np.ascontiguousarray(vectors[self.train_sample(len(vectors))], dtype=np.float32))
        else:
            index = trained
        index.nprobe = self.cfg.resolved_nprobe(self.nlist)
        self.gens = [Generation(index, 0, np.zeros(self.nlist, dtype=np.int64))]
        self.ivf_count = 0
        self._gen_of[:] = -1
        self._set_buffer(np.empty(0, np.int64), np.empty((0, self.dim), np.float32))
        self._recent.clear()
        zeta = self._encode_add(ids, vectors)
        self.train_zeta_mean = float(zeta.mean()) if len(zeta) else 0.0
        self.trainings += 1
        return zeta

    def add_generation(self, index: faiss.IndexIVFPQ, sample: np.ndarray) -> None:
        """Install a retrained index as the newest generation (it encodes arrivals from now on; no
        code is re-encoded). The drift reference is the mean zeta of the ``sample`` it was trained
        on, under its own codes."""
        index.nprobe = self.cfg.resolved_nprobe(self.nlist)
        self.gens.append(Generation(index, 0, np.zeros(self.nlist, dtype=np.int64)))
        x = np.ascontiguousarray(sample, dtype=np.float32)
        zeta = np.linalg.norm(x - index.sa_decode(index.sa_encode(x)), axis=1) if len(x) else np.zeros(1)
        self.train_zeta_mean = float(zeta.mean())
        self._recent.clear()
        self.trainings += 1

    def generation_to_merge(self) -> int | None:
        """Position of the generation to re-encode into the newest: the smallest older one, once
        there are more than ``warm_generations``; None otherwise."""
        if len(self.gens) <= max(1, self.cfg.warm_generations):
            return None
        return int(np.argmin([g.count for g in self.gens[:-1]]))

    def generation_keys(self, pos: int) -> np.ndarray:
        """Keys coded in generation ``pos`` (list order)."""
        return self.gens[pos].keys()

    def drop_generation(self, pos: int) -> None:
        """Remove an older generation and all its codes (the caller re-encodes its items)."""
        if pos == len(self.gens) - 1:
            raise ValueError("the newest warm generation encodes arrivals; it cannot be dropped")
        g = self.gens.pop(pos)
        self.ivf_count -= g.count
        self._gen_of[self._gen_of == pos] = -1
        self._gen_of[self._gen_of > pos] -= 1

    def merge(self, pos: int, vectors_of) -> tuple[np.ndarray, np.ndarray]:
        """Re-encode generation ``pos`` into the newest: its keys and their new zetas.
        ``vectors_of(keys)`` gives exact vectors (the memory's originals)."""
        keys = self.generation_keys(pos)
        self.drop_generation(pos)
        zeta = self._encode_add(keys, vectors_of(keys), record=False)
        self.merges += 1
        return keys, zeta

    def reconstruct(self, keys: np.ndarray, x: np.ndarray) -> np.ndarray:
        """(n, d) what each IVF key's PQ score is computed from: decode(encode(x)) with the
        quantizers of the key's own generation (faiss encoding is deterministic)."""
        gen = self._gen_of[np.asarray(keys, np.int64)]
        out = np.array(x, dtype=np.float32)
        for pos in np.unique(gen[gen >= 0]):
            sel = gen == pos
            ix = self.gens[pos].index
            out[sel] = ix.sa_decode(ix.sa_encode(np.ascontiguousarray(out[sel])))
        return out

    def needs_retrain(self) -> bool:
        """Mean zeta of the recent window (full) exceeds factor x the mean at training time."""
        if not self.gens or len(self._recent) < self._recent.maxlen or self.train_zeta_mean <= 0:
            return False
        return float(np.mean(self._recent)) > self.cfg.retrain_drift_factor * self.train_zeta_mean

    def remove(self, ids: np.ndarray, in_buffer: np.ndarray) -> None:
        """Remove ids; ``in_buffer`` (n,) bool says which ones sit in the exact buffer."""
        buf = ids[in_buffer]
        if len(buf):
            keep = ~np.isin(self.buf_ids, buf)
            if int(keep.size - keep.sum()) != len(buf):
                raise RuntimeError("warm buffer removal: some ids are not buffered; bookkeeping is broken")
            self._set_buffer(self.buf_ids[keep], self.buf_vecs[keep])  # compacts: no spare rows left
        ivf = np.ascontiguousarray(ids[~in_buffer], dtype=np.int64)
        if len(ivf):
            gen = self._gen_of[ivf] if ivf.max() < len(self._gen_of) else np.full(len(ivf), -1, np.int16)
            if (gen < 0).any():
                raise RuntimeError(f"warm IVF id {int(ivf[gen < 0][0])} is in no generation: bookkeeping is broken")
            for pos in np.unique(gen)[::-1]:  # newest first: dropping an emptied one keeps lower positions
                g, mine = self.gens[pos], ivf[gen == pos]
                removed = g.index.remove_ids(faiss.IDSelectorBatch(mine))
                if removed != len(mine):
                    raise RuntimeError(f"warm IVF removed {removed} of {len(mine)} ids: bookkeeping is broken")
                g.count -= len(mine)
                self.ivf_count -= len(mine)
                self._gen_of[mine] = -1
                g.gpu = None
                if g.count == 0 and pos < len(self.gens) - 1:
                    self.drop_generation(int(pos))

    def compact_lists(self) -> None:
        """Copy every inverted list into a fresh one allocated to its size: spare capacity becomes 0.
        One Python call per list (not per item); the codes and ids are unchanged."""
        for g in self.gens:
            inv = g.index.invlists
            fresh = faiss.ArrayInvertedLists(g.index.nlist, g.index.code_size)
            for i in range(g.index.nlist):
                n = inv.list_size(i)
                if n:
                    fresh.add_entries(i, n, inv.get_ids(i), inv.get_codes(i))
            g.index.replace_invlists(fresh, True)
            fresh.this.disown()  # owned by the index now
            g.list_cap = np.array([fresh.list_size(i) for i in range(g.index.nlist)], dtype=np.int64)
            g.gpu = None

    def buffer_vectors(self, ids: np.ndarray) -> np.ndarray:
        pos = {int(i): p for p, i in enumerate(self.buf_ids.tolist())}
        return self.buf_vecs[[pos[int(i)] for i in ids]]

    # -- search --------------------------------------------------------------------------------
    def search_ivf(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """PQ-approximate candidates from every generation: scores (Q, c), ids (Q, c) sorted by PQ
        score (c = k x generations holding codes; -inf / -1 padded), and per query the floor: the
        largest k-th PQ score of a generation that returned k candidates (-inf if none did). A warm
        item of a probed list that was not returned has PQ score <= its generation's k-th <= floor.
        Each generation's k best are kept whole (no merged cut), so a generation whose PQ scores
        run lower than another's loses nothing to it before rescoring."""
        nq = len(queries)
        empty = np.full(nq, -np.inf, np.float32)
        if not self.gens or self.ivf_count == 0 or k == 0:
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64), empty
        parts = [self._search_generation(g, queries, k) for g in self.gens if g.count]
        floor = empty
        for d, i in parts:
            floor = np.maximum(floor, np.where(i[:, -1] >= 0, d[:, -1], -np.inf)).astype(np.float32)
        if len(parts) == 1:
            d, i = parts[0]
        else:
            d = np.concatenate([p[0] for p in parts], axis=1)
            i = np.concatenate([p[1] for p in parts], axis=1)
            d = np.where(i >= 0, d, -np.inf)
            order = np.argsort(-d, axis=1, kind="stable")
            d, i = np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)
        if (i >= 0).all():
            return d.astype(np.float32, copy=False), i, floor
        return np.where(i >= 0, d, -np.inf).astype(np.float32), i, floor

    def _search_generation(self, g: Generation, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = g.index
        if self.gpu:
            if g.gpu is None:
                co = faiss.GpuClonerOptions()
                co.useFloat16 = True  # float16 lookup tables: needed for large pq_m on GPU
                g.gpu = faiss.index_cpu_to_gpu(self._gpu_res, 0, g.index, co)
            g.gpu.nprobe = g.index.nprobe
            index = g.gpu
        return index.search(queries, k)

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
    def recent_zeta(self) -> np.ndarray:
        """The window of recent PQ errors that decides a drift retraining (float32, oldest first)."""
        return np.asarray(list(self._recent), dtype=np.float32)

    def index_bytes(self) -> np.ndarray:
        """Every generation's serialised index, back to back (oldest first; see ``generation_table``)."""
        blobs = [faiss.serialize_index(g.index) for g in self.gens]
        return np.concatenate(blobs) if blobs else np.empty(0, dtype=np.uint8)

    def generation_table(self) -> np.ndarray:
        """(generations,) serialised bytes of each generation's index, in ``index_bytes`` order."""
        return np.asarray([len(faiss.serialize_index(g.index)) for g in self.gens], dtype=np.int64)

    def restore(self, blob: np.ndarray, buf_ids: np.ndarray, buf_vecs: np.ndarray, recent: np.ndarray,
                train_zeta_mean: float, trainings: int, table: np.ndarray | None = None,
                merges: int = 0) -> None:
        """Inverse of ``index_bytes`` + buffer + drift window; ``table`` (``generation_table``) is
        absent from snapshots written before generations: one index."""
        blob = np.asarray(blob, dtype=np.uint8)
        if table is None:
            sizes = [len(blob)] if len(blob) else []
        else:
            sizes = [int(n) for n in np.asarray(table).ravel()]
        if sum(sizes) != len(blob) or any(n <= 0 for n in sizes):
            raise ValueError(f"warm tier: generation table {sizes} does not match {len(blob)} index bytes")
        self.gens, self.ivf_count = [], 0
        self._gen_of = np.full(0, -1, dtype=np.int16)
        at = 0
        for n in sizes:
            index = faiss.deserialize_index(blob[at:at + n])  # already downcast, owning
            at += n
            self.nlist = index.nlist
            index.nprobe = self.cfg.resolved_nprobe(self.nlist)
            inv = index.invlists  # deserialised lists are allocated to their exact sizes
            g = Generation(index, int(index.ntotal),
                           np.array([inv.list_size(i) for i in range(index.nlist)], dtype=np.int64))
            self.gens.append(g)
            self.ivf_count += g.count
            self._set_gen(g.keys(), len(self.gens) - 1)
        self._set_buffer(buf_ids, buf_vecs)
        self._recent.clear()
        self._recent.extend(recent.tolist())
        self.train_zeta_mean = float(train_zeta_mean)
        self.trainings = int(trainings)
        self.merges = int(merges)
