"""Typed settings of the tiered memory (one dataclass, every field documented and range-checked)."""

from __future__ import annotations

import dataclasses
import math

from luma_pl.configuration import StrictConfig, require

HOT_BACKENDS = ("hnsw", "flat", "gpu_flat")
WARM_BACKENDS = ("ivfpq", "gpu_ivfpq")
RETRAIN_MODES = ("full", "coarse", "hot_start")
# nprobe=0: max(NPROBE_MIN, nlist / NPROBE_DIV), i.e. the same share (1.6%) of lists at any nlist
# (an option; the measured default is a fixed 16, see ``MemoryConfig.nprobe``)
NPROBE_MIN = 16
NPROBE_DIV = 64
# Automatic oversample = clamp(warm_items / 15000, 10, 100). Measured (d=512, 1000 clusters, PQ64x8,
# hot 10%): Recall@10 rescored 1.000 at 100k with 10; at 1M 10 -> 0.59, 32 -> 0.88, 48 -> 0.953,
# 64 -> 0.983, 100 -> 1.000 (raw IVFPQ nlist 1024 nprobe 16; nprobe 8..64 made no difference).
OVERSAMPLE_ITEMS = 15_000
OVERSAMPLE_MIN = 10
OVERSAMPLE_MAX = 100
# Hot rows a flat scan handles as fast as a graph search (d=512, one thread, batched queries of 512:
# flat 4,000 rows 0.053 ms/query, 10,000 rows 0.137; HNSW M=32 on 40,000 rows 0.086; see
# bench/bench_hot_steady.py, which prints the crossover measured in its run).
HOT_FLAT_ROWS = 4096
# Bytes of one exact hot vector row plus its bookkeeping, used to reject budgets that cannot hold
# even one item (the real per-node cost, graph links included, is measured at run time).
_ID_BYTES = 8
# Bytes one buffered warm item costs against warm_max_bytes: vector + id + zeta slot + the per-item
# bookkeeping TieredMemory charges to its tier (tiered.ITEM_BOOKKEEPING_BYTES, 61; kept equal by a test).
# The training buffer must fit at this price, or it never reaches the training size.
_BUFFER_ITEM_BOOKKEEPING = 61


def _buffered_row_bytes(dim: int) -> int:
    return dim * 4 + 12 + _BUFFER_ITEM_BOOKKEEPING


@dataclasses.dataclass
class MemoryConfig(StrictConfig):
    """Configuration of ``TieredMemory``. Budgets are hard limits: the memory never exceeds them."""

    dim: int = 512
    """Vector dimension d; every inserted vector is (d,) float32 and L2-normalised."""
    hot_max_items: int = 10_000
    """Most live items the hot (exact) tier may hold."""
    hot_max_bytes: int = 64 << 20
    """RAM bytes the hot tier may use: vectors + graph links + tombstoned rows + id arrays."""
    warm_max_items: int = 100_000
    """Most items the warm tier (PQ codes and the exact pre-training buffer together) may hold."""
    warm_max_bytes: int = 64 << 20
    """RAM bytes the warm tier may use: codes + ids + lists + quantizers + buffer vectors + zeta."""
    hot_backend: str = "hnsw"
    """'hnsw' (faiss IndexHNSWFlat, CPU), 'flat' (exact IndexFlatIP, CPU) or 'gpu_flat' (GpuIndexFlatIP)."""
    hnsw_m: int = 32
    """HNSW graph degree M (2M links per node on level 0)."""
    ef_construction: int = 80
    """HNSW efConstruction: candidate list size while building; higher = better graph, slower add."""
    ef_search: int = 64
    """HNSW efSearch: candidate list size while searching; raised to k when k is larger."""
    tombstone_fraction: float = 0.8
    """Compact a sealed hot segment once this fraction of its rows are tombstones (removed items):
    its live rows move back to the exact mutable segment and the segment is dropped (see
    ``luma_pl.memory.hot``). A stream that demotes its oldest items empties segments in order, so a
    high fraction mostly drops segments whole instead of re-inserting their survivors."""
    hot_seal_rows: int = 0
    """Rows of the hot tier's mutable exact segment before it is sealed into a graph segment
    ('hnsw' backend). 0 = chosen by measured cost (``resolved_seal_rows``): a hot tier of at most
    ``HOT_FLAT_ROWS`` items is never sealed (a flat scan of it is as fast as a graph search), a larger
    one seals every ``HOT_FLAT_ROWS`` rows."""
    hot_ef_share: bool = True
    """Split ``ef_search`` over the sealed hot segments by their shares of the live rows (at least k
    each), so a query costs about what one graph of all of them would; False gives every segment the
    full ``ef_search`` (higher recall, a query cost growing with the segment count)."""
    hot_segment_rows: int = 0
    """Most rows of one sealed hot segment (a seal adds to the newest segment while it stays under
    this). 0 = ``hot_max_items``: a stream that demotes oldest-first then holds about two segments,
    the one dying and the one growing."""
    nlist: int = 0
    """IVF lists of the warm tier; 0 = choose ~4*sqrt(warm_max_items), bounded by the training size."""
    nprobe: int = 16
    """IVF lists visited per query (clamped to nlist); 0 = scale with nlist (``resolved_nprobe``).
    Never faiss's default of 1 by accident. Measured (bench/results/memory_n1000000.md): Recall@10 with
    rescoring did not change from nprobe 8 to 128 at nlist 1200 (N=100k) nor from 8 to 32 at nlist 1024
    (N=1M), while latency grows linearly, so the default is a fixed 16 rather than a share of nlist."""
    pq_m: int = 64
    """PQ sub-quantizers; must divide dim. Code size is pq_m * pq_nbits / 8 bytes."""
    pq_nbits: int = 8
    """Bits per PQ sub-quantizer code (2**nbits centroids each)."""
    pq_train_iterations: int = 10
    """k-means iterations of each PQ sub-quantizer when the warm tier (re)trains (faiss's default is
    25). Training stalls ingest: at d=512, pq_m=64, 8 bits on ~10k points, one thread, 25 iterations
    take 16.9 s, 10 take 6.8 s, for mean zeta +0.8% and the same Recall@10 (0.312 vs 0.310; top-100
    recall 1.000 both) on clustered data."""
    train_points_per_centroid: int = 39
    """Training waits for this many points per centroid (IVF and PQ); faiss warns below 39."""
    retrain_drift_factor: float = 1.5
    """Retrain the warm tier when mean zeta over the recent window exceeds this factor x training mean."""
    retrain_mode: str = "hot_start"
    """How a drift retraining (``retrain_drift_factor``) retrains the warm IVFPQ (``retrain.train_ivfpq``):
    'full' (coarse k-means and PQ from scratch, ``pq_train_iterations``), 'coarse'
    (``retrain_coarse_iterations`` of coarse k-means started from the current centroids; the PQ
    codebooks are kept) or 'hot_start' (that coarse step, then ``retrain_pq_iterations`` PQ iterations
    from the current codebooks). The first training, when the exact buffer fills, is always full.
    Measured on bench/bench_admission.py's drifting stream (d=512, nlist 32, PQ64x8, 9,984-point
    sample, one thread; N=40k, hot 10%, so every arrival is demoted to warm): one retraining on the
    same state (13.3k warm items; mean zeta 0.412 under the old index) takes 6.9 s CPU for zeta 0.3607
    'full', 0.90 s for 0.3606 'hot_start' (4 coarse + 1 PQ iteration; 2 PQ: 1.8 s, 0.3600), 0.05 s
    for 0.3623 'coarse'. Over the stream: 'full' 8 retrainings, 60 s of training, final zeta 0.430;
    'hot_start' 8, 5.8 s, 0.419; 'coarse' 9, 0.4 s, 0.462 (kept codebooks fall behind: zeta ratchets
    up). Re-encoding every warm item adds 0.2-0.8 s per retraining in any mode. On small drifting
    streams (d=32, nlist 8, PQ8x4) 'coarse' did not lower the drifted items' zeta and retrained 66
    times where 'full' did 16 and 'hot_start' 25, so 'coarse' suits only residuals that do not drift.
    With warm generations (``warm_generations`` 3, no re-encoding at a retraining), the same N=40k
    stream, whole memory through bench/bench_admission.py: 'hot_start' 6 retrainings, 6.1 s of stalls,
    recall@10 0.543 vs exact (oversample 10); 'coarse' 6, 1.4 s (1.1 s of it merging a generation),
    recall@10 0.520, ingest 0.73x raw faiss final placement against 0.48x."""
    retrain_coarse_iterations: int = 4
    """Coarse k-means iterations of a 'coarse' or 'hot_start' retraining, started from the current
    centroids."""
    retrain_pq_iterations: int = 1
    """PQ k-means iterations of a 'hot_start' retraining, started from the current codebooks."""
    retrain_in_background: bool = False
    """Retrain the warm IVFPQ in a spawned worker process while ingest goes on (the old codebook
    keeps encoding meanwhile); the new index is installed ``retrain_lag_inserts`` inserts later,
    waiting for the worker if needed. Deterministic and resumable (see ``luma_pl.memory.retrain``).
    False: retrain in line (a stall of seconds per retraining at d=512). The first training, when
    the exact buffer fills, is always in line."""
    warm_generations: int = 3
    """Most warm PQ generations searched together. A drift retraining installs its index as a new
    generation that encodes arrivals from then on; older codes stay with their own quantizers (no
    re-encoding). Past this count the smallest older generation is re-encoded into the newest from the
    originals. 1 = every retraining re-encodes the whole warm tier (quadratic over a long stream:
    each retraining touches every warm item)."""
    retrain_lag_inserts: int = 32
    """Inserts between starting a background retraining and installing its index."""
    zeta_window: int = 4096
    """Number of most recent warm encodings whose mean zeta is compared against training time."""
    oversample: int = 0
    """Rescoring factor: warm search fetches oversample*k PQ candidates and rescores them exactly.
    0 = scale with the warm tier's size (``resolved_oversample``)."""
    promote_min_hits: int = 2
    """The memory's own migration (``migrate()``, a ``HitMigration`` check) promotes warm items whose
    counted hits (top-k appearances, in a Space-Saving counter over ids) reach this count to hot
    (``HitMigration.promote_min_count``)."""
    migrate_capacity: int = 256
    """Ids the memory's migration counter tracks (``HitMigration.capacity``): the most-hit ones, with
    counts that overestimate by at most (hits counted) / capacity."""
    migrate_idle_checks: int = 2
    """The memory's migration demotes a hot item that is not heavy and had no hit for this many checks
    (``HitMigration.idle_checks``); a newly placed item gets as many checks of grace."""
    migrate_max_moves: int = 64
    """Most promotions, and most demotions, per migration check (``HitMigration.max_moves``);
    promotions are also capped at half the hot capacity (at least 1)."""
    migrate_every_n_searches: int = 0
    """Run ``migrate()`` (one check of the memory's ``HitMigration``) automatically after every n-th
    ``search`` that records hits (0 = never; then the caller calls ``migrate()``, or the Lightning
    callback ``TierMigration`` runs its own ``HitMigration``, which a memory with n > 0 refuses)."""
    warm_backend: str = "ivfpq"
    """'ivfpq' (CPU IndexIVFPQ) or 'gpu_ivfpq' (searches on a GpuIndexIVFPQ copy of the CPU index)."""
    originals_sync_rows: int = 4096
    """Group commit of the originals store: fsync + header once this many rows are pending (1 = every
    insert). Rows are readable at once; save() and close() always commit first."""
    seed: int = 1234
    """Seed of faiss k-means training, so two memories built the same way are identical."""

    def validate(self) -> None:
        o = "MemoryConfig"
        require(self.dim >= 1, o, "dim", self.dim, "use a positive vector dimension")
        row = self.dim * 4 + _ID_BYTES
        require(self.hot_max_items >= 0, o, "hot_max_items", self.hot_max_items, "use >= 0 (0 = no hot tier)")
        require(self.warm_max_items >= 0, o, "warm_max_items", self.warm_max_items, "use >= 0")
        require(
            self.hot_max_items == 0 or self.hot_max_bytes >= row,
            o, "hot_max_bytes", self.hot_max_bytes,
            f"a hot budget must hold at least one vector ({row} bytes at dim={self.dim}); raise it or set hot_max_items=0",
        )
        require(
            self.warm_max_items == 0 or self.warm_max_bytes >= row,
            o, "warm_max_bytes", self.warm_max_bytes,
            f"a warm budget must hold at least one buffered vector ({row} bytes at dim={self.dim}); raise it or set warm_max_items=0",
        )
        require(self.hot_max_items + self.warm_max_items >= 1, o, "hot_max_items", self.hot_max_items,
                "hot_max_items + warm_max_items must be >= 1")
        require(self.hot_backend in HOT_BACKENDS, o, "hot_backend", self.hot_backend, f"use one of {HOT_BACKENDS}")
        require(self.hnsw_m >= 2, o, "hnsw_m", self.hnsw_m, "use M >= 2 (16-64 is typical)")
        require(self.ef_construction >= 1, o, "ef_construction", self.ef_construction, "use >= 1 (40-200 typical)")
        require(self.ef_search >= 1, o, "ef_search", self.ef_search, "use >= 1 (>= k is sensible)")
        require(0.0 < self.tombstone_fraction < 1.0, o, "tombstone_fraction", self.tombstone_fraction,
                "use a fraction in (0, 1), e.g. 0.2")
        require(self.hot_seal_rows >= 0, o, "hot_seal_rows", self.hot_seal_rows,
                "use 0 (chosen by measured cost) or a positive row count, e.g. 4096")
        require(self.hot_segment_rows >= 0, o, "hot_segment_rows", self.hot_segment_rows,
                "use 0 (hot_max_items) or a positive row count >= hot_seal_rows")
        require(self.nlist >= 0, o, "nlist", self.nlist, "use 0 (automatic) or a positive list count")
        require(self.nlist <= max(self.warm_max_items, 1), o, "nlist", self.nlist,
                f"more lists than warm items ({self.warm_max_items}) leaves lists empty; lower nlist or use 0")
        require(self.nprobe >= 0, o, "nprobe", self.nprobe, "use 0 (scale with nlist) or >= 1 (e.g. 64)")
        require(self.migrate_every_n_searches >= 0, o, "migrate_every_n_searches", self.migrate_every_n_searches,
                "use 0 (never) or a positive search count")
        require(self.warm_backend in WARM_BACKENDS, o, "warm_backend", self.warm_backend, f"use one of {WARM_BACKENDS}")
        require(self.originals_sync_rows >= 1, o, "originals_sync_rows", self.originals_sync_rows,
                "use >= 1 (1 = fsync every insert)")
        require(self.pq_m >= 1 and self.dim % self.pq_m == 0, o, "pq_m", self.pq_m,
                f"pq_m must be a positive divisor of dim={self.dim}")
        require(1 <= self.pq_nbits <= 16, o, "pq_nbits", self.pq_nbits, "use 1..16 bits (8 is typical)")
        require(self.pq_train_iterations >= 1, o, "pq_train_iterations", self.pq_train_iterations,
                "use >= 1 k-means iterations (10 is the default, faiss uses 25)")
        require(self.train_points_per_centroid >= 1, o, "train_points_per_centroid",
                self.train_points_per_centroid, "use >= 1 (39 avoids faiss warnings)")
        require(self.retrain_drift_factor > 1.0, o, "retrain_drift_factor", self.retrain_drift_factor,
                "use a factor > 1, e.g. 1.5")
        require(self.retrain_mode in RETRAIN_MODES, o, "retrain_mode", self.retrain_mode,
                f"use one of {RETRAIN_MODES} ('hot_start' is the default, 'full' retrains from scratch)")
        require(self.retrain_coarse_iterations >= 1, o, "retrain_coarse_iterations",
                self.retrain_coarse_iterations, "use >= 1 k-means iterations from the current centroids (4 is the default)")
        require(self.retrain_pq_iterations >= 1, o, "retrain_pq_iterations", self.retrain_pq_iterations,
                "use >= 1 k-means iterations from the current codebooks (1 is the default)")
        require(self.warm_generations >= 1, o, "warm_generations", self.warm_generations,
                "use >= 1 (1 = one index, re-encoded at every retraining; 3 is the default)")
        require(self.zeta_window >= 1, o, "zeta_window", self.zeta_window, "use >= 1")
        require(self.retrain_lag_inserts >= 0, o, "retrain_lag_inserts", self.retrain_lag_inserts,
                "use >= 0 inserts (0 installs at the next insert)")
        require(self.oversample >= 0, o, "oversample", self.oversample,
                "use 0 (scale with the warm size) or >= 1 (1 = rescore only the k PQ hits)")
        require(self.promote_min_hits >= 1, o, "promote_min_hits", self.promote_min_hits, "use >= 1")
        require(self.migrate_capacity >= 1, o, "migrate_capacity", self.migrate_capacity,
                "use >= 1 tracked ids (256 is the default)")
        require(self.migrate_idle_checks >= 1, o, "migrate_idle_checks", self.migrate_idle_checks,
                "use >= 1 checks without a hit before a hot item is demoted")
        require(self.migrate_max_moves >= 0, o, "migrate_max_moves", self.migrate_max_moves,
                "use >= 0 moves per check (0 = the check only counts)")
        need = self.train_size() * _buffered_row_bytes(self.dim)
        require(self.nlist == 0 or self.train_size() > self.warm_max_items or need <= self.warm_max_bytes,
                o, "nlist", self.nlist,
                f"training needs {self.train_size()} buffered vectors ({need} bytes) but warm_max_bytes="
                f"{self.warm_max_bytes}; lower nlist, use nlist=0, or raise warm_max_bytes")

    def resolved_nlist(self) -> int:
        """IVF list count: the configured one, else ~4*sqrt(warm_max_items) bounded so training fits.

        Bounds: at least 1; at most warm_max_items / train_points_per_centroid (so the buffer can fill
        to the training size), and small enough that the exact buffer at training size fits in the warm
        byte budget (buffered vectors cost d*4 bytes each, far more than a PQ code).
        """
        if self.nlist:
            return self.nlist
        n = max(self.warm_max_items, 1)
        guess = int(round(4 * math.sqrt(n)))
        by_items = n // self.train_points_per_centroid
        # 90%: the buffer's spare capacity and the tier's fixed structures need room too
        by_bytes = int(0.9 * self.warm_max_bytes) // (_buffered_row_bytes(self.dim) * self.train_points_per_centroid)
        return int(max(1, min(guess, by_items, by_bytes, 65536)))

    def resolved_seal_rows(self) -> int:
        """Mutable hot rows before a seal: the configured count, else never (a hot tier of at most
        ``HOT_FLAT_ROWS`` items stays one exact segment) or every ``HOT_FLAT_ROWS`` rows."""
        if self.hot_seal_rows:
            return int(self.hot_seal_rows)
        return self.hot_max_items + 1 if self.hot_max_items <= HOT_FLAT_ROWS else HOT_FLAT_ROWS

    def resolved_segment_rows(self) -> int:
        """Most rows per sealed hot segment: the configured count, else ``hot_max_items``."""
        return int(max(self.hot_segment_rows or self.hot_max_items, self.resolved_seal_rows(), 1))

    def resolved_nprobe(self, nlist: int | None = None) -> int:
        """The configured nprobe, else nlist/NPROBE_DIV (at least NPROBE_MIN), clamped to nlist."""
        nlist = self.resolved_nlist() if nlist is None else nlist
        n = self.nprobe or max(NPROBE_MIN, math.ceil(nlist / NPROBE_DIV))
        return int(max(1, min(n, nlist)))

    def resolved_oversample(self, warm_items: int) -> int:
        """The configured oversample, else clamp(ceil(warm_items / OVERSAMPLE_ITEMS), OVERSAMPLE_MIN,
        OVERSAMPLE_MAX): the candidates needed grow with the number of near-ties PQ cannot order."""
        if self.oversample:
            return int(self.oversample)
        return int(min(OVERSAMPLE_MAX, max(OVERSAMPLE_MIN, math.ceil(warm_items / OVERSAMPLE_ITEMS))))

    def train_size(self) -> int:
        """Warm vectors needed before the IVFPQ trains: points_per_centroid x max(nlist, 2**nbits)."""
        return self.train_points_per_centroid * max(self.resolved_nlist(), 2**self.pq_nbits)
