"""Hot tier: exact vectors in RAM, in segments: one mutable exact segment plus sealed HNSW segments.

faiss HNSW cannot remove ids. The old design kept one graph, tombstoned removals and rebuilt the
whole graph once tombstones passed a fraction of its rows; at steady state (hot tier full, every
arrival demoting an older item) that rebuilt ~4,000 rows every few hundred arrivals and cost 3.4
extra graph inserts per arrival. This tier is log-structured instead, as Milvus (growing / sealed
segments), Lucene and FreshDiskANN (a mutable index beside read-only ones) are:

* the **mutable segment** is an exact flat array (``seal_rows`` rows at most): every insert lands
  here (a memcpy), every removal from it is a row move, and it is searched by one matrix product;
* once it holds ``seal_rows`` rows it is **sealed**: its rows are added to the newest sealed segment
  (an ``IndexHNSWFlat``) while that one holds fewer than ``segment_rows`` rows, else to a new one,
  so every row is inserted into a graph once;
* removal of a row of a sealed segment is a **tombstone** of that segment alone (filtered at search
  time with an ``IDSelectorBitmap``); a segment with no live row left is dropped whole; a segment
  whose tombstones pass ``tombstone_fraction`` of its rows is **compacted**: its live rows move back
  into the mutable segment (exact, so nothing is lost in between) and the segment is dropped, so no
  removal ever rebuilds more than one segment's live rows, and a stream that demotes oldest-first
  mostly drops segments whole.

Search asks the mutable segment (exact) and every sealed segment (``efSearch`` = max(ef_search, k))
and merges by score. Backends: ``'hnsw'`` seals as above; ``'flat'`` never seals (the mutable
segment is the whole tier: exact, and at a few thousand rows faster to search than a graph, see
``MemoryConfig.hot_seal_rows``); ``'gpu_flat'`` is ``'flat'`` searched on a ``GpuIndexFlatIP`` copy.

Rows are identified by the memory's keys (small non-negative ints): two dense arrays indexed by key
say where a key is (``_seg``: -1 absent, 0 mutable, s + 1 sealed segment s) and at which row
(``_pos``), so every lookup is vectorised. Everything here is deterministic: the graph of a segment
depends only on the rows added to it, in order (faiss' HNSW level generator is seeded per index).
"""

from __future__ import annotations

import dataclasses

import faiss
import numpy as np

_ABSENT, _MUTABLE = -1, 0


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a CUDA device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclasses.dataclass
class Segment:
    """A sealed HNSW segment: ``index`` rows are ``keys`` (append order), ``live`` False = tombstone."""

    index: faiss.IndexHNSWFlat
    keys: np.ndarray  # (rows,) int64
    live: np.ndarray  # (rows,) bool
    live_count: int
    bitmap: np.ndarray | None = None  # packed live bits, kept alive while faiss reads them
    params: dict = dataclasses.field(default_factory=dict)  # efSearch -> SearchParametersHNSW (+ selector)

    def tombstoned(self) -> None:
        """Liveness changed: the bitmap and the search parameters holding it are stale."""
        self.bitmap = None
        self.params.clear()

    def search_params(self, ef: int):
        """Cached ``SearchParametersHNSW`` for this efSearch, with a live-rows bitmap selector when
        the segment holds tombstones (building them per call cost more than a small graph search)."""
        p = self.params.get(ef)
        if p is None:
            if self.live_count == self.rows:
                p = (faiss.SearchParametersHNSW(efSearch=ef),)
            else:
                if self.bitmap is None:
                    self.bitmap = np.packbits(self.live, bitorder="little")
                sel = faiss.IDSelectorBitmap(self.rows, faiss.swig_ptr(self.bitmap))
                p = (faiss.SearchParametersHNSW(sel=sel, efSearch=ef), sel)  # keep the selector alive
            self.params[ef] = p
        return p[0]

    @property
    def rows(self) -> int:
        return len(self.keys)

    def link_bytes(self) -> int:
        h = self.index.hnsw
        return int(h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4)

    def vectors(self) -> np.ndarray:
        """(rows, d) view of the exact vectors the index stores (tombstones included)."""
        flat = faiss.downcast_index(self.index.storage)
        return faiss.rev_swig_ptr(flat.get_xb(), self.rows * self.index.d).reshape(self.rows, self.index.d)


class HotTier:
    """Exact hot vectors of live keys, in a mutable flat segment and sealed HNSW segments."""

    def __init__(self, dim: int, backend: str = "hnsw", m: int = 32, ef_construction: int = 80,
                 ef_search: int = 64, tombstone_fraction: float = 0.2, item_bytes: int = 0,
                 seal_rows: int = 4096, segment_rows: int = 1 << 62, max_rows: int = 1 << 62,
                 ef_share: bool = True):
        if backend == "gpu_flat" and not gpu_available():
            raise ValueError("hot_backend='gpu_flat' needs faiss with GPU support and a CUDA device; use 'hnsw'")
        self.dim, self.backend, self.m = dim, backend, m
        self.ef_construction, self.ef_search = ef_construction, ef_search
        self.tombstone_fraction = tombstone_fraction
        self.item_bytes = int(item_bytes)  # bookkeeping the owner charges per live item (see nbytes)
        self.seal_rows = max(1, int(seal_rows)) if backend == "hnsw" else 1 << 62
        self.segment_rows = max(self.seal_rows, int(segment_rows))
        self.max_rows = max(1, int(max_rows))  # the owner's item budget: bounds the mutable capacity
        self.ef_share = bool(ef_share)
        self._gpu_res = faiss.StandardGpuResources() if backend == "gpu_flat" else None
        self._gpu_index = None  # GpuIndexFlatIP copy of the mutable segment; None = stale
        self._mvec = np.empty((0, dim), dtype=np.float32)  # (capacity, d); first _mn rows used
        self._mkey = np.empty(0, dtype=np.int64)
        self._mn = 0
        self.segments: list[Segment] = []
        self._seg = np.full(0, _ABSENT, dtype=np.int32)  # key -> -1 absent, 0 mutable, s+1 segment s
        self._pos = np.zeros(0, dtype=np.int32)  # key -> row inside its segment
        self._live_count = 0
        self.seals = 0  # mutable segment -> graph
        self.compactions = 0  # sealed segments whose live rows moved back to the mutable segment
        self.drops = 0  # sealed segments dropped with no live row left

    # -- sizes ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._live_count

    @property
    def rows(self) -> int:
        """Rows held: the mutable segment's plus every sealed segment's (tombstones included)."""
        return self._mn + sum(s.rows for s in self.segments)

    @property
    def tombstones(self) -> int:
        return self.rows - self._live_count

    @property
    def mutable_rows(self) -> int:
        return self._mn

    @property
    def rebuilds(self) -> int:
        """Segment compactions (the one operation that re-inserts rows); kept under the old name."""
        return self.compactions

    def live_ids(self) -> np.ndarray:
        """(live,) keys: sealed segments oldest first, then the mutable segment."""
        parts = [s.keys[s.live] for s in self.segments] + [self._mkey[: self._mn]]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def where(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment code, row) of each key: code -1 absent, 0 mutable, s + 1 sealed segment s."""
        keys = np.asarray(keys, dtype=np.int64)
        inside = keys < len(self._seg)
        safe = np.where(inside, keys, 0)
        return np.where(inside, self._seg[safe], _ABSENT), np.where(inside, self._pos[safe], 0)

    def rows_of(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``where`` of live keys; KeyError naming the first key that is not live here."""
        seg, pos = self.where(keys)
        if (seg == _ABSENT).any():
            raise KeyError(f"id {int(np.asarray(keys)[seg == _ABSENT][0])} is not live in the hot tier")
        return seg, pos

    def slot_nbytes(self) -> int:
        """Bytes of the key -> (segment, row) arrays (8 per key ever placed here)."""
        return int(self._seg.nbytes + self._pos.nbytes)

    def _place(self, keys: np.ndarray, seg: int, pos: np.ndarray) -> None:
        if len(keys) and keys.max() >= len(self._seg):
            n = max(int(keys.max()) + 1, 2 * len(self._seg))
            seg_arr = np.full(n, _ABSENT, dtype=np.int32)
            seg_arr[: len(self._seg)] = self._seg
            pos_arr = np.zeros(n, dtype=np.int32)
            pos_arr[: len(self._pos)] = self._pos
            self._seg, self._pos = seg_arr, pos_arr
        self._seg[keys] = seg
        self._pos[keys] = pos

    def nbytes(self) -> int:
        """RAM bytes: the mutable segment's allocated rows (vector + key; spare ones too, released
        by ``compact``), every sealed row (vector +
        key + live flag, tombstones included) and its graph links read from the HNSW structure itself
        (neighbor table int32, per-node offsets size_t, levels int32, so upper levels are counted
        exactly), plus the owner's per-item bookkeeping for live items. Not counted: std::vector
        spare capacity inside faiss (bounded by the payload again), the GPU copy for 'gpu_flat'."""
        total = len(self._mkey) * (self.dim * 4 + 8)
        for s in self.segments:
            total += s.rows * (self.dim * 4 + 8 + 1) + s.link_bytes()
        return int(total + self._live_count * self.item_bytes)

    def _links_per_row(self) -> float:
        rows = sum(s.rows for s in self.segments)
        if rows:
            return sum(s.link_bytes() for s in self.segments) / rows
        # level 0 has 2M links; the levels above add ~M/(M-1) more on average
        return (2 * self.m + self.m / (self.m - 1)) * 4 + 12

    def bytes_per_new_row(self) -> float:
        """Expected bytes one more live row costs once sealed (vector + key + links at the graph's
        average degree); a row in the mutable segment costs less, so this is an upper bound."""
        base = self.dim * 4 + 8 + 1 + self.item_bytes
        return float(base + (self._links_per_row() if self.backend == "hnsw" else 0.0))

    # -- mutation ------------------------------------------------------------------------------
    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add (n,) keys with their (n, d) exact vectors (keys must not be live here); seal the
        mutable segment when it reaches ``seal_rows``."""
        if len(keys) == 0:
            return
        keys = np.asarray(keys, dtype=np.int64)
        self._append_mutable(keys, np.ascontiguousarray(vectors, dtype=np.float32))
        self._live_count += len(keys)
        if self._mn >= self.seal_rows:
            self.seal()

    def _append_mutable(self, keys: np.ndarray, x: np.ndarray) -> None:
        need = self._mn + len(keys)
        if need > len(self._mkey):  # doubling, never past the seal size or max_rows (plus this batch)
            cap = max(need, min(max(2 * len(self._mkey), 64), self.seal_rows, self.max_rows))
            vec = np.empty((cap, self.dim), dtype=np.float32)
            vec[: self._mn] = self._mvec[: self._mn]
            key = np.full(cap, -1, dtype=np.int64)
            key[: self._mn] = self._mkey[: self._mn]
            self._mvec, self._mkey = vec, key
        self._mvec[self._mn : need] = x
        self._mkey[self._mn : need] = keys
        self._place(keys, _MUTABLE, np.arange(self._mn, need))
        self._mn = need
        self._gpu_index = None

    def _new_graph(self) -> faiss.IndexHNSWFlat:
        index = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index

    def seal(self) -> None:
        """Move every mutable row into the newest sealed segment (a new one when that would pass
        ``segment_rows``): one graph insert per row, nothing else re-inserted."""
        n = self._mn
        if n == 0 or self.backend != "hnsw":
            return
        keys, x = self._mkey[:n].copy(), self._mvec[:n]
        last = self.segments[-1] if self.segments else None
        if last is None or last.rows + n > self.segment_rows:
            last = Segment(self._new_graph(), np.empty(0, np.int64), np.empty(0, bool), 0)
            self.segments.append(last)
        start = last.rows
        last.index.add(np.ascontiguousarray(x))
        last.keys = np.concatenate([last.keys, keys])
        last.live = np.concatenate([last.live, np.ones(n, bool)])
        last.live_count += n
        last.tombstoned()
        self._place(keys, len(self.segments), np.arange(start, start + n))
        self._mn = 0
        self._mvec, self._mkey = np.empty((0, self.dim), np.float32), np.empty(0, np.int64)  # free the rows
        self._gpu_index = None
        self.seals += 1

    def remove(self, keys: np.ndarray) -> None:
        """Remove live keys: rows of the mutable segment are dropped (the others move up), rows of a
        sealed segment become tombstones; an emptied segment is dropped, one past
        ``tombstone_fraction`` compacted (``compact_segment``)."""
        if len(keys) == 0:
            return
        keys = np.asarray(keys, dtype=np.int64)
        seg, pos = self.rows_of(keys)
        self._seg[keys] = _ABSENT
        self._live_count -= len(keys)
        mut = seg == _MUTABLE
        if mut.any():
            keep = np.ones(self._mn, bool)
            keep[pos[mut]] = False
            n = int(keep.sum())
            self._mvec[:n] = self._mvec[: self._mn][keep]
            self._mkey[:n] = self._mkey[: self._mn][keep]
            self._mn = n
            self._pos[self._mkey[:n]] = np.arange(n)
            self._gpu_index = None
        touched = np.unique(seg[~mut])
        for code in touched:
            s = self.segments[code - 1]
            rows = pos[seg == code]
            s.live[rows] = False
            s.live_count -= len(rows)
            s.tombstoned()
        # drop / compact from the newest touched segment down, so the codes of the others stay valid
        for code in touched[::-1]:
            s = self.segments[code - 1]
            if s.live_count == 0:
                self._drop_segment(code - 1)
                self.drops += 1
            elif s.rows - s.live_count > self.tombstone_fraction * s.rows:
                self.compact_segment(code - 1)

    def compact_segment(self, i: int) -> None:
        """Move sealed segment i's live rows back into the mutable segment and drop it (its rows are
        exact in the mutable segment until it seals again)."""
        s = self.segments[i]
        live = np.flatnonzero(s.live)
        keys, x = s.keys[live], np.array(s.vectors()[live])
        self._drop_segment(i)
        self._append_mutable(keys, x)
        self.compactions += 1
        if self._mn >= self.seal_rows:
            self.seal()

    def _drop_segment(self, i: int) -> None:
        del self.segments[i]
        later = self._seg > i + 1
        self._seg[later] -= 1

    def compact(self) -> None:
        """Free every byte not holding a live row (the memory calls this under byte pressure): each
        sealed segment holding a tombstone is compacted (segment order: deterministic), and the
        mutable segment's spare rows are released."""
        i = 0
        while i < len(self.segments):
            s = self.segments[i]
            if s.live_count < s.rows:
                self.compact_segment(i)  # drops segment i; the next one moves to i
            else:
                i += 1
        if len(self._mkey) > self._mn:
            self._mvec, self._mkey = self._mvec[: self._mn].copy(), self._mkey[: self._mn].copy()

    # -- reading -------------------------------------------------------------------------------
    def vectors(self, keys: np.ndarray) -> np.ndarray:
        """(n, d) exact vectors of live keys."""
        seg, pos = self.rows_of(keys)
        out = np.empty((len(seg), self.dim), dtype=np.float32)
        mut = seg == _MUTABLE
        out[mut] = self._mvec[pos[mut]]
        for code in np.unique(seg[~mut]):
            sel = seg == code
            out[sel] = self.segments[code - 1].vectors()[pos[sel]]
        return out

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over live rows: scores (Q, kk) float32 and keys (Q, kk) int64 with kk = min(k, live),
        -1 / -inf where fewer were found."""
        nq = len(queries)
        kk = min(k, self._live_count)
        if kk == 0 or nq == 0:
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        parts = []
        if self._mn:
            parts.append(self._search_mutable(queries, kk))
        sealed = self._live_count - self._mn
        for s in self.segments:
            if s.live_count:
                # efSearch split by the segments' shares of the sealed live rows: several segments
                # cost about what one graph of all of them would (search cost grows with ef)
                ef = max(kk, self.ef_search if not self.ef_share else -(-self.ef_search * s.live_count // sealed))
                parts.append(self._search_segment(s, queries, kk, ef))
        if len(parts) == 1:
            d, i = parts[0]
        else:
            d = np.concatenate([p[0] for p in parts], axis=1)
            i = np.concatenate([p[1] for p in parts], axis=1)
            top = np.argsort(-d, axis=1, kind="stable")[:, :kk]
            d, i = np.take_along_axis(d, top, axis=1), np.take_along_axis(i, top, axis=1)
        if d.shape[1] < kk:
            pad = kk - d.shape[1]
            d = np.pad(d, ((0, 0), (0, pad)), constant_values=-np.inf)
            i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
        found = i >= 0
        if found.all():
            return d.astype(np.float32, copy=False), i
        return np.where(found, d, -np.inf).astype(np.float32), np.where(found, i, -1)

    def _search_mutable(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = self._mn
        kk = min(k, n)
        if self.backend == "gpu_flat":
            if self._gpu_index is None:
                self._gpu_index = faiss.GpuIndexFlatIP(self._gpu_res, self.dim)
                self._gpu_index.add(self._mvec[:n])
            d, r = self._gpu_index.search(q, kk)
            return d, np.where(r >= 0, self._mkey[np.maximum(r, 0)], -1)
        s = q @ self._mvec[:n].T  # (Q, n): one BLAS product
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < n else np.broadcast_to(np.arange(n), s.shape)
        return np.take_along_axis(s, top, axis=1), self._mkey[top]

    def _search_segment(self, s: Segment, q: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        kk = min(k, s.live_count)
        d, r = s.index.search(q, kk, params=s.search_params(ef))
        return d, np.where(r >= 0, s.keys[np.maximum(r, 0)], -1)

    # -- audit and persistence -----------------------------------------------------------------
    def audit(self) -> np.ndarray:
        """Check the segments against the key -> (segment, row) arrays; return the live keys.
        AssertionError naming the first broken invariant."""
        def check(cond, what):
            if not cond:
                raise AssertionError(f"hot tier audit failed: {what}")
        keys = self.live_ids()
        check(len(keys) == self._live_count and len(np.unique(keys)) == len(keys), "live count or duplicate keys")
        seg, pos = self.where(keys)
        check((seg[len(keys) - self._mn:] == _MUTABLE).all() and
              (pos[len(keys) - self._mn:] == np.arange(self._mn)).all(), "mutable rows map is stale")
        at = 0
        for i, s in enumerate(self.segments):
            live = np.flatnonzero(s.live)
            check(s.index.ntotal == s.rows and len(live) == s.live_count and s.live_count > 0,
                  f"segment {i}: rows / live count disagree with its index")
            check((seg[at:at + len(live)] == i + 1).all() and (pos[at:at + len(live)] == live).all(),
                  f"segment {i}: key -> row map is stale")
            at += len(live)
        check(int((self._seg >= 0).sum()) == self._live_count, "a removed key still has a place")
        return keys

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Arrays that restore this tier with the memory's originals: ``hot_index`` the sealed
        segments' serialised graphs back to back, ``hot_ids`` every row's key (mutable rows first,
        then each segment's rows), ``hot_live`` each row's liveness, ``hot_segments`` (1 + segments, 2):
        rows and index bytes per part (the mutable segment first, 0 bytes: its vectors are the
        originals of its keys)."""
        blobs = [faiss.serialize_index(s.index) for s in self.segments]
        parts = [(self._mn, 0)] + [(s.rows, len(b)) for s, b in zip(self.segments, blobs, strict=True)]
        return {"hot_index": np.concatenate(blobs) if blobs else np.empty(0, np.uint8),
                "hot_ids": np.concatenate([self._mkey[: self._mn]] + [s.keys for s in self.segments]),
                "hot_live": np.concatenate([np.ones(self._mn, bool)] + [s.live for s in self.segments]),
                "hot_segments": np.asarray(parts, dtype=np.int64).reshape(-1, 2)}

    def restore(self, arrays: dict[str, np.ndarray], originals, counters: dict) -> None:
        """Inverse of ``state_arrays``; ``originals(keys)`` gives exact vectors (the mutable rows').
        A snapshot from before segments (one index, no ``hot_segments``) loads as one sealed segment
        ('hnsw') or as the mutable segment ('flat', 'gpu_flat')."""
        blob = np.asarray(arrays["hot_index"], dtype=np.uint8)
        keys = np.asarray(arrays["hot_ids"], dtype=np.int64)
        live = np.asarray(arrays["hot_live"], dtype=bool)
        if len(live) != len(keys):
            raise ValueError(f"hot tier: {len(keys)} row keys but {len(live)} liveness flags were saved")
        parts = arrays.get("hot_segments")
        if parts is None:  # the single-index layout
            index = faiss.deserialize_index(blob) if len(blob) else None
            rows = 0 if index is None else index.ntotal
            if rows != len(keys):
                raise ValueError(f"hot index holds {rows} rows but {len(keys)} ids were saved")
            if self.backend == "hnsw" and rows:
                parts = np.array([[0, 0], [rows, len(blob)]])
            else:
                keys, live = keys[live], live[live]
                parts = np.array([[len(keys), 0]])
                blob = np.empty(0, np.uint8)
        parts = np.asarray(parts, dtype=np.int64).reshape(-1, 2)
        if parts[:, 0].sum() != len(keys) or parts[:, 1].sum() != len(blob) or (parts < 0).any():
            raise ValueError(f"hot tier: segment table {parts.tolist()} does not match {len(keys)} rows "
                             f"and {len(blob)} index bytes")
        if self.backend != "hnsw" and len(parts) > 1:
            raise ValueError(f"hot tier: the snapshot holds {len(parts) - 1} sealed graph segments but "
                             f"hot_backend={self.backend!r} has none; load it with hot_backend='hnsw'")
        self.__init__(self.dim, self.backend, self.m, self.ef_construction, self.ef_search,
                      self.tombstone_fraction, self.item_bytes, self.seal_rows, self.segment_rows, self.max_rows,
                      self.ef_share)
        n0 = int(parts[0, 0])
        if not live[:n0].all():
            raise ValueError("hot tier: a mutable-segment row was saved as a tombstone")
        if n0:
            self._append_mutable(keys[:n0], originals(keys[:n0]))
        at_row, at_byte = n0, 0
        for rows, nbytes in parts[1:].tolist():
            index = faiss.deserialize_index(blob[at_byte:at_byte + nbytes])
            seg_keys, seg_live = keys[at_row:at_row + rows], live[at_row:at_row + rows]
            if index.ntotal != rows or not seg_live.any():
                raise ValueError(f"hot tier: a saved segment holds {index.ntotal} rows for {rows} keys "
                                 f"({int(seg_live.sum())} live)")
            index.hnsw.efSearch, index.hnsw.efConstruction = self.ef_search, self.ef_construction
            self.segments.append(Segment(index, seg_keys.copy(), seg_live.copy(), int(seg_live.sum())))
            live_rows = np.flatnonzero(seg_live)
            self._place(seg_keys[live_rows], len(self.segments), live_rows)
            at_row, at_byte = at_row + rows, at_byte + nbytes
        self._live_count = int(live.sum())
        self.seals = int(counters.get("hot_seals", 0))
        self.compactions = int(counters.get("hot_rebuilds", 0))
        self.drops = int(counters.get("hot_segment_drops", 0))
