"""TieredMemory: hot exact tier + warm PQ tier (+ exact buffer) + on-disk originals, under budgets.

Every admitted item gets a *key*: its row in the originals store (append-only, so keys are never
reused; an upsert gets a new key and the old one is marked REPLACED). The faiss indexes store keys,
so mapping a hit to its external id, zeta and access counters is an array lookup, not a dict walk.
Per-key arrays (``ids``, ``locations``, ``hits``, ``last_access``, ``zeta``) are the single source of
truth for where an item is; ``audit()`` checks them against the indexes.

Bytes: every live item is charged ``ITEM_BOOKKEEPING_BYTES`` on top of its index bytes, in the tier
that holds it (hot or warm), and the budgets cover that charge: the per-key arrays (ids 8, locations
1, hits 8, last_access 8, zeta 4), the hot tier's id -> row slot (8) and the ``key_of`` id map entry
(``IdMap``: 16 B in sorted arrays plus a bounded share of its pending dict, 24 B upper bound). What no
budget covers is reported on its own line, ``bookkeeping``: the same arrays and id map entries for
evicted/replaced ids (the memory remembers every id it ever admitted, so this grows with ids ever
inserted, ~61 B each; it was ~160 B with a dict) plus the arrays' spare capacity. ``originals_disk`` is on disk, not RAM.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
import warnings

import numpy as np

from luma_pl.memory.config import MemoryConfig
from luma_pl.memory.hot import HotTier
from luma_pl.memory.id_map import IdMap
from luma_pl.memory.migration import HitMigration
from luma_pl.memory.originals import OriginalsStore
from luma_pl.memory.policy import AdmissionPolicy, NewestFirstLRU
from luma_pl.memory.retrain import BackgroundTrainer
from luma_pl.memory.tiers import BUFFER, EVICTED, HOT, REPLACED, TIER_NAMES, WARM
from luma_pl.memory.warm import WarmTier

_NORM_TOL = 1e-3
_PER_KEY_ARRAY_BYTES = 8 + 1 + 8 + 8 + 4  # ids, locations, hits, last_access, zeta
_HOT_ROW_SLOT_BYTES = 8  # HotTier's id -> row array, indexed by key
# IdMap: 16 bytes in its sorted arrays + at most ~8 bytes' share of its bounded pending dict
# (124 B per pending entry, at most 1/16 of the ids pending; see luma_pl/memory/id_map.py)
_ID_MAP_ENTRY_BYTES = 16 + 8
ITEM_BOOKKEEPING_BYTES = _PER_KEY_ARRAY_BYTES + _HOT_ROW_SLOT_BYTES + _ID_MAP_ENTRY_BYTES
"""Bytes charged per live item to the tier holding it, on top of its index bytes (61)."""


@dataclasses.dataclass
class SearchResult:
    """Per query q and rank r: ``ids[q, r]`` (-1 = no item), ``scores`` (-inf when none), ``tiers``
    (HOT=0, WARM=1, BUFFER=2, -1 none), ``zeta`` (0 for exact or rescored scores), and ``zeta_max``
    of the warm tier's PQ codes (0 when nothing is PQ-coded). ``pq_floor`` (rescored searches): per
    query, the PQ score of the last warm candidate fetched for rescoring (-inf when the probed lists
    held no more): a warm item of a probed list that was not fetched has exact score <= pq_floor +
    its zeta, the bound the Safe@k closing term uses."""

    ids: np.ndarray  # (Q, k) int64
    scores: np.ndarray  # (Q, k) float32
    tiers: np.ndarray  # (Q, k) int8
    zeta: np.ndarray  # (Q, k) float32
    zeta_max: float
    pq_floor: np.ndarray | None = None  # (Q,) float32, rescored searches only


def pad_result(res: SearchResult, k: int) -> SearchResult:
    """``res`` widened to k columns with empty slots (id -1, score -inf, tier -1, zeta 0), the same
    marks a search that found fewer than k items uses, so callers that mask ``ids >= 0`` need nothing
    new. Used when k was clamped to the live item count."""
    pad = k - res.ids.shape[1]
    if pad <= 0:
        return res
    width = ((0, 0), (0, pad))
    return SearchResult(np.pad(res.ids, width, constant_values=-1),
                        np.pad(res.scores, width, constant_values=-np.inf).astype(np.float32),
                        np.pad(res.tiers, width, constant_values=-1).astype(np.int8),
                        np.pad(res.zeta, width).astype(np.float32), res.zeta_max, res.pq_floor)


COUNTERS = {"inserted": 0, "evictions": 0, "promotions": 0, "demotions": 0, "replaced": 0, "retrains": 0,
            "tick": 0, "searches": 0, "auto_migrations": 0, "retrain_waits": 0, "retrain_wait_ms": 0,
            "insert_calls": 0, "retrain_ms": 0, "retrain_encode_ms": 0}
"""Every counter a memory keeps (a snapshot written before one existed loads it as 0). Retraining
stalls, in wall ms of the calling thread: ``retrain_ms`` is all of it (in-line trainings, waits for the
background worker, re-encoding every warm item at each install), ``retrain_encode_ms`` the re-encoding
part and ``retrain_wait_ms`` the waits (``retrain_waits`` installs had to wait)."""


def new_migration(config: MemoryConfig) -> HitMigration:
    """The ``HitMigration`` a memory owns, from its config (local: not a collective, see HitMigration)."""
    return HitMigration(capacity=config.migrate_capacity, promote_min_count=config.promote_min_hits,
                        idle_checks=config.migrate_idle_checks, max_moves=config.migrate_max_moves,
                        collective=False)


MIGRATION_ARRAYS = ("hits_seen", "last_hit_check")
MIGRATION_COUNTER_ARRAYS = ("labels", "counts", "errors", "table")
"""The memory's ``HitMigration`` state saved as arrays (``migration_<name>``, counter ones as
``migration_counter_<name>``); its scalars go to the snapshot's meta as ``migration``."""


def migration_arrays(migration: HitMigration) -> dict[str, np.ndarray]:
    state = migration.state_dict()
    counter = state["counter"]
    return {**{f"migration_{n}": np.asarray(state[n], np.int64) for n in MIGRATION_ARRAYS},
            **{f"migration_counter_{n}": np.asarray(counter[n], np.int64) for n in MIGRATION_COUNTER_ARRAYS}}


def migration_scalars(migration: HitMigration) -> dict:
    state = migration.state_dict()
    counter = state.pop("counter")
    return {**{k: v for k, v in state.items() if k not in MIGRATION_ARRAYS},
            "counter": {k: v for k, v in counter.items() if k not in MIGRATION_COUNTER_ARRAYS}}


class TieredMemory:
    def __init__(self, config: MemoryConfig, directory: str | None = None,
                 policy: AdmissionPolicy | None = None):
        config.validate()
        self.cfg = config
        self.policy = policy or NewestFirstLRU()
        self._owns_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="luma_memory_")
        self.originals = OriginalsStore(self.directory, config.dim, sync_rows=config.originals_sync_rows)
        if self.originals.rows:
            raise ValueError(f"directory {self.directory!r} already holds originals; use persistence.load() to open a saved memory")
        self.hot = HotTier(config.dim, config.hot_backend, config.hnsw_m, config.ef_construction,
                           config.ef_search, config.tombstone_fraction, item_bytes=ITEM_BOOKKEEPING_BYTES,
                           seal_rows=config.resolved_seal_rows(), segment_rows=config.resolved_segment_rows(),
                           max_rows=max(1, min(config.hot_max_items, config.hot_max_bytes // (
                               config.dim * 4 + 9 + ITEM_BOOKKEEPING_BYTES))), ef_share=config.hot_ef_share)
        self.warm = WarmTier(config, item_bytes=ITEM_BOOKKEEPING_BYTES)
        cap = 1024
        self.ids = np.zeros(cap, dtype=np.int64)  # (keys,) external id of each key
        self.locations = np.full(cap, REPLACED, dtype=np.int8)  # (keys,) location code
        self.hits = np.zeros(cap, dtype=np.int64)  # (keys,) appearances in returned top-k
        self.last_access = np.zeros(cap, dtype=np.int64)  # (keys,) tick of insert or last hit
        self.zeta = np.zeros(cap, dtype=np.float32)  # (keys,) PQ error; 0 while exact
        self.labels = np.full(cap, -1, dtype=np.int64)  # (keys,) the inserter's group label (-1: none)
        self.key_of = IdMap()  # external id -> current key (sorted arrays: 16 B per id, not a dict's ~124)
        self.counters = dict(COUNTERS)
        self._zeta_max: float | None = 0.0
        # a background retraining in flight: the sample's keys and the tick at which it is installed
        self._trainer: BackgroundTrainer | None = None
        self.retrain_keys = np.empty(0, np.int64)
        self.retrain_at = -1
        self._warned_k_clamp = False  # search(k > live items) warns once per memory, not once per batch
        self.migration = new_migration(config)
        """The memory's own ``HitMigration`` (``migrate()``; scheduled by ``migrate_every_n_searches``)."""

    # ------------------------------------------------------------------ validation helpers
    @property
    def num_keys(self) -> int:
        return self.originals.rows

    def _check_ids(self, ids, name: str = "ids") -> np.ndarray:
        arr = np.asarray(ids)
        if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
            raise ValueError(f"{name} must be a 1-D integer array, got dtype={arr.dtype} shape={arr.shape}")
        arr = arr.astype(np.int64)
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name} must be >= 0 (-1 marks an empty result slot); got {int(arr.min())}")
        uniq, counts = np.unique(arr, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"{name} repeats id(s) {uniq[counts > 1][:5].tolist()} within one call; pass each id once")
        return arr

    def _check_vectors(self, vectors, n: int | None, name: str = "vectors", unit: bool = True) -> np.ndarray:
        x = np.asarray(vectors)
        if x.dtype.kind not in "fiu":  # complex would drop its imaginary part, bool/str/object are not vectors
            raise ValueError(f"{name} has dtype {x.dtype}; pass real float32 rows (e.g. x.astype(np.float32))")
        if x.ndim != 2 or x.shape[1] != self.cfg.dim or (n is not None and x.shape[0] != n):
            want = f"({n if n is not None else 'n'}, {self.cfg.dim})"
            raise ValueError(f"{name} must have shape {want}, got {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            bad = ~np.isfinite(x).all(axis=1)
            raise ValueError(f"{name} row {int(np.flatnonzero(bad)[0])} has NaN or inf values")
        if unit and len(x):
            norms = np.linalg.norm(x, axis=1)
            off = np.abs(norms - 1) > _NORM_TOL
            if off.any():
                r = int(np.flatnonzero(off)[0])
                raise ValueError(f"{name} row {r} has L2 norm {norms[r]:.4f}; rows must be L2-normalised (x / ||x||)")
        return x

    def _keys_of(self, ids, allowed: tuple[int, ...], action: str) -> np.ndarray:
        ids = self._check_ids(ids)
        keys = self._lookup(ids)
        if (keys < 0).any():
            raise ValueError(f"cannot {action} id {int(ids[keys < 0][0])}: it was never inserted")
        bad = ~np.isin(self.locations[keys], allowed)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise ValueError(f"cannot {action} id {int(ids[j])}: it is {TIER_NAMES[int(self.locations[keys[j]])]}, "
                             f"expected {[TIER_NAMES[a] for a in allowed]}")
        return keys

    def _lookup(self, ids: np.ndarray) -> np.ndarray:
        """(n,) current key of each id, -1 for ids never inserted (one searchsorted, see IdMap)."""
        return self.key_of.lookup(ids)

    # ------------------------------------------------------------------ per-key arrays
    def _grow(self, need: int) -> None:
        cap = len(self.ids)
        if need <= cap:
            return
        new = max(need, 2 * cap)
        for name, fill in (("ids", 0), ("locations", REPLACED), ("hits", 0), ("last_access", 0), ("zeta", 0),
                           ("labels", -1)):
            old = getattr(self, name)
            arr = np.full(new, fill, dtype=old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)

    def restore_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Fill this fresh memory (whose originals already hold ``meta['num_keys']`` rows) from the
        arrays and scalars ``luma_pl.memory.persistence`` saved, then ``audit()`` it. A background
        retraining that was running when the memory was saved starts again on the same sample and is
        installed at the same insert, so the loaded memory continues as the saved one would."""
        n = int(meta["num_keys"])
        for name in ("ids", "locations", "hits", "last_access", "zeta"):
            if len(arrays[name]) != n:
                raise ValueError(f"saved memory is inconsistent: {name} has {len(arrays[name])} rows, expected {n}")
        if self.originals.rows != n:
            raise ValueError(f"saved memory is inconsistent: originals hold {self.originals.rows} rows, expected {n}")
        self._grow(n)
        for name in ("ids", "locations", "hits", "last_access", "zeta"):
            getattr(self, name)[:n] = arrays[name]
        labels = np.asarray(arrays.get("labels", np.full(n, -1)), np.int64)  # absent before labels were kept
        if len(labels) != n:
            raise ValueError(f"saved memory is inconsistent: labels has {len(labels)} rows, expected {n}")
        self.labels[:n] = labels
        live = np.flatnonzero(arrays["locations"] < 4)
        self.key_of = IdMap.from_arrays(arrays["ids"][live], live)
        self.counters = {**COUNTERS, **{k: int(v) for k, v in meta["counters"].items()}}
        self.hot.restore(arrays, self.originals.get, {"hot_rebuilds": meta["hot_rebuilds"],
                                                      "hot_seals": meta.get("hot_seals", 0),
                                                      "hot_segment_drops": meta.get("hot_segment_drops", 0)})
        self.warm.restore(arrays["warm_index"], arrays["warm_buf_ids"], arrays["warm_buf_vecs"],
                          arrays["warm_recent"], meta["warm_train_zeta_mean"], meta["warm_trainings"],
                          arrays.get("warm_generations"), meta.get("warm_merges", 0))
        self._zeta_max = None
        self.audit()
        self._restore_migration(arrays, meta, n)
        keys = np.asarray(arrays.get("retrain_keys", np.empty(0, np.int64)), np.int64)
        at = int(meta.get("retrain_at", -1))
        if len(keys) and at >= 0:
            if len(keys) > n or keys.min() < 0 or keys.max() >= n:
                raise ValueError(f"saved memory is inconsistent: retrain_keys point outside its {n} keys")
            self._start_retrain(keys, at)

    def _restore_migration(self, arrays: dict[str, np.ndarray], meta: dict, n: int) -> None:
        """The migration state a snapshot holds (``migration_*`` arrays, meta ``migration``); a
        snapshot written before the memory kept one starts a fresh HitMigration whose first check
        counts every hit recorded so far (like the old rule, which read the total hits)."""
        self.migration = new_migration(self.cfg)
        scalars = meta.get("migration", {})
        if not isinstance(scalars, dict):
            raise ValueError(f"saved memory is inconsistent: meta 'migration' is {type(scalars).__name__}, not a dict")
        state = {**{k: v for k, v in scalars.items() if k != "counter"},
                 **{name: arrays.get(f"migration_{name}") for name in MIGRATION_ARRAYS}}
        counter = dict(scalars.get("counter", {}))
        for name in MIGRATION_COUNTER_ARRAYS:
            if f"migration_counter_{name}" in arrays:
                counter[name] = arrays[f"migration_counter_{name}"]
        state["counter"] = counter
        for name in MIGRATION_ARRAYS:
            v = state[name]
            if v is not None and len(v) > n:
                raise ValueError(f"saved memory is inconsistent: migration_{name} has {len(v)} rows, more than "
                                 f"its {n} keys")
        self.migration.load_state_dict(state)

    # ------------------------------------------------------------------ the Memory protocol
    distributed = False
    """Its search is a collective over ranks that each hold a share (``ShardedMemory``): no."""

    @property
    def shard(self) -> TieredMemory:
        """The part of the memory this process holds: all of it."""
        return self

    @property
    def dim(self) -> int:
        return int(self.cfg.dim)

    def keys_in(self, location: int) -> np.ndarray:
        """Keys currently at ``location`` (ascending = oldest first)."""
        return np.flatnonzero(self.locations[: self.num_keys] == location)

    def location(self, item_id: int) -> str:
        """'hot', 'warm', 'buffer' or 'evicted'; ValueError for an id never inserted."""
        key = self.key_of.get(int(item_id))
        if key is None:
            raise ValueError(f"id {item_id} was never inserted")
        return TIER_NAMES[int(self.locations[key])]

    def __len__(self) -> int:
        """Live items (hot + warm + buffer)."""
        return len(self.hot) + len(self.warm)

    # ------------------------------------------------------------------ insertion
    def insert(self, ids, vectors, tier: str | None = None, upsert: bool = False, hot=None, labels=None) -> None:
        """Admit (n,) ids with (n, d) unit vectors. Where each goes: ``hot``, an (n,) bool mask, is
        the caller's admission decision (True: hot, False: warm); else ``tier`` 'hot' or 'warm' for
        all; else (both None) ``policy.admit_hot`` chooses. ``labels`` (n,) int64: each item's group
        (a cluster label, -1 none), kept per key (``labels``) for the policy's victim ranking before
        anything moves. An id already known (live or evicted) is an error unless ``upsert``."""
        ids = self._check_ids(ids)
        x = self._check_vectors(vectors, len(ids))
        if tier not in (None, "hot", "warm"):
            raise ValueError(f"tier={tier!r} is invalid; use None (policy decides), 'hot' or 'warm'")
        if hot is not None:
            if tier is not None:
                raise ValueError(f"tier={tier!r} and a hot mask were both given; pass one of them")
            hot = np.asarray(hot)
            if hot.shape != ids.shape or hot.dtype != bool:
                raise ValueError(f"hot has shape {hot.shape} and dtype {hot.dtype}; pass an ({len(ids)},) bool mask")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != ids.shape or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"labels has shape {labels.shape} and dtype {labels.dtype}; pass ({len(ids)},) ints")
        if tier == "hot" and len(ids) > self.hot_capacity():  # checked before anything changes
            raise ValueError(f"tier='hot' with {len(ids)} items but the hot budget holds {self.hot_capacity()}; "
                             "insert fewer or use tier=None")
        old = self._lookup(ids)
        old = old[old >= 0]
        if len(old) and not upsert:
            raise ValueError(f"ids {sorted(self.ids[old].tolist())[:5]} are already in the memory; "
                             "pass upsert=True to replace them")
        # The originals first: it is the one step that can fail for reasons outside the memory (disk
        # full, I/O error) and it is failure-atomic, so if it raises nothing has changed yet; an upsert
        # that removed the old entries first would lose them (len - n, audit() failing).
        keys = self.originals.append(x)
        self._grow(self.num_keys)
        if len(old):
            self._remove_keys(old[self.locations[old] != EVICTED])
            self.locations[old] = REPLACED
            self.counters["replaced"] += len(old)
        self.counters["tick"] += 1
        self.counters["insert_calls"] += 1
        self.ids[keys] = ids
        self.hits[keys] = 0
        self.last_access[keys] = self.counters["tick"]
        self.labels[keys] = -1 if labels is None else labels
        self.key_of.assign(ids, keys)
        self.counters["inserted"] += len(ids)
        if hot is not None:
            to_hot = hot.copy()
        elif tier is None:
            to_hot = np.asarray(self.policy.admit_hot(self, keys, x), dtype=bool)
        else:
            to_hot = np.full(len(ids), tier == "hot")
        hot_keys = keys[to_hot]
        fit = self.hot_capacity()
        spill = hot_keys[: max(0, len(hot_keys) - fit)]  # newest-first: the batch's earliest spill
        self._to_warm(np.concatenate([keys[~to_hot], spill]), x[np.concatenate([np.flatnonzero(~to_hot), np.flatnonzero(to_hot)[: len(spill)]])])
        keep = np.flatnonzero(to_hot)[len(spill):]
        self._to_hot(keys[keep], x[keep])
        self._after_warm_change()

    def hot_capacity(self) -> int:
        """Most items an empty hot tier holds under both budgets."""
        by_bytes = int(self.cfg.hot_max_bytes // self.hot.bytes_per_new_row())
        return max(0, min(self.cfg.hot_max_items, by_bytes))

    def _to_hot(self, keys: np.ndarray, x: np.ndarray) -> None:
        """Place keys in hot, demoting LRU hot items first so both budgets hold afterwards."""
        if len(keys) == 0:
            return
        excess = len(self.hot) + len(keys) - self.cfg.hot_max_items
        if excess > 0:
            self._demote_keys(self.policy.hot_victims(self, excess))
        per_row = self.hot.bytes_per_new_row()
        if self.hot.nbytes() + len(keys) * per_row > self.cfg.hot_max_bytes:
            self.hot.compact()  # tombstones hold bytes; free them before demoting anyone else
        over = self.hot.nbytes() + len(keys) * per_row - self.cfg.hot_max_bytes
        if over > 0:
            self._demote_keys(self.policy.hot_victims(self, math.ceil(over / per_row)))
            self.hot.compact()
        self.hot.add(keys, x)
        self.locations[keys] = HOT
        self.zeta[keys] = 0.0
        # the graph's link count is random (levels); fix a rare overshoot by demoting the LRU item
        while self.hot.nbytes() > self.cfg.hot_max_bytes and len(self.hot):
            self._demote_keys(self.policy.hot_victims(self, 1))
            self.hot.compact()

    def _to_warm(self, keys: np.ndarray, x: np.ndarray) -> None:
        if len(keys) == 0:
            return
        zeta = self.warm.add(keys, x)
        self.locations[keys] = WARM if self.warm.trained else BUFFER
        self.zeta[keys] = zeta
        if len(zeta) and self._zeta_max is not None:
            self._zeta_max = max(self._zeta_max, float(zeta.max()))

    def _demote_keys(self, keys: np.ndarray) -> None:
        if len(keys) == 0:
            return
        x = self.hot.vectors(keys)
        self.hot.remove(keys)
        self._to_warm(keys, x)
        self.counters["demotions"] += len(keys)

    def _remove_keys(self, keys: np.ndarray) -> None:
        """Take live keys out of their tier (the caller sets the new location)."""
        loc = self.locations[keys]
        if (loc == HOT).any():
            self.hot.remove(keys[loc == HOT])
        warm = (loc == WARM) | (loc == BUFFER)
        if warm.any():
            self.warm.remove(keys[warm], loc[warm] == BUFFER)
            self._zeta_max = None

    def _evict_keys(self, keys: np.ndarray) -> None:
        self._remove_keys(keys)
        self.locations[keys] = EVICTED
        self.counters["evictions"] += len(keys)

    def _after_warm_change(self) -> None:
        """Train once the buffer is big enough, retrain on zeta drift, then enforce warm budgets."""
        if self.warm.ready_to_train():
            keys = self.warm.buf_ids.copy()
            self._set_warm_zeta(keys, self.warm.train(keys, self.warm.buf_vecs))
        elif self.retrain_at >= 0:
            if self.counters["insert_calls"] >= self.retrain_at:
                self._install_retrained()
        elif self.warm.needs_retrain():
            if self.cfg.retrain_in_background:
                self._start_retrain()
            else:
                self.retrain()
        excess = len(self.warm) - self.cfg.warm_max_items
        if excess > 0:
            self._evict_keys(self.policy.warm_victims(self, excess))
        while self.warm.nbytes() > self.cfg.warm_max_bytes:
            per = self.warm.bytes_per_code() if self.warm.trained else self.warm.bytes_per_buffered()
            n = math.ceil((self.warm.nbytes() - self.cfg.warm_max_bytes) / per)
            if n >= len(self.warm) and self.warm.list_spare_bytes():
                # evicting can only free item bytes: when the lists' spare capacity is what is left
                # over budget, reallocate the lists to their sizes (rare: costs a copy of every code)
                self.warm.compact_lists()
                continue
            if not len(self.warm):
                break
            self._evict_keys(self.policy.warm_victims(self, n))

    def _set_warm_zeta(self, keys: np.ndarray, zeta: np.ndarray) -> None:
        self.locations[keys] = WARM
        self.zeta[keys] = zeta
        self._zeta_max = None

    def retrain(self) -> None:
        """Retrain the warm IVFPQ (``cfg.retrain_mode``, from the index in use) on the exact
        originals of a sample of warm items and install it (``_install``)."""
        keys = self._retrain_sample()
        if keys is None:
            return
        t = time.perf_counter()
        x = self.originals.get(keys)
        self._install(self.warm.retrained_index(x), x, t)

    def _retrain_sample(self) -> np.ndarray | None:
        """Keys a retraining trains on (None: too few warm items): the seeded sample of every warm
        item, also with generations (items of a generation merged into the newest later are then
        described by its quantizers as well: training on the newest items only left mean zeta 0.60
        against 0.38 on the d=32 drift stream of tests/luma_pl/memory/test_memory_retrain.py)."""
        warm = self._warm_keys()
        if len(warm) < self.warm.train_size:
            return None
        return warm[self.warm.train_sample(len(warm))]

    def _install(self, index, sample: np.ndarray, started: float) -> None:
        """Install a retrained index: as a new generation (``cfg.warm_generations`` > 1: nothing is
        re-encoded, except a generation merged into the newest past the count), or by re-encoding
        every warm item with it (1). The stall since ``started`` is counted (``retrain_ms``, of which
        re-encoding ``retrain_encode_ms``)."""
        t = time.perf_counter()
        if self.cfg.warm_generations == 1:
            keys = self._warm_keys()
            self._set_warm_zeta(keys, self.warm.train(keys, self.originals.get(keys), trained=index))
        else:
            self.warm.add_generation(index, sample)
            while (pos := self.warm.generation_to_merge()) is not None:
                self._set_warm_zeta(*self.warm.merge(pos, self.originals.get))
        done = time.perf_counter()
        self.counters["retrains"] += 1
        self.counters["retrain_encode_ms"] += int(round(1000 * (done - t)))
        self.counters["retrain_ms"] += int(round(1000 * (done - started)))

    def _warm_keys(self) -> np.ndarray:
        return np.concatenate([self.keys_in(WARM), self.keys_in(BUFFER)])

    def _start_retrain(self, keys: np.ndarray | None = None, at: int | None = None) -> None:
        """Train a new warm index on a seeded sample of the warm items' originals in the background
        worker; it is installed at the ``at``-th insert call (default: now + retrain_lag_inserts)."""
        if keys is None:
            keys = self._retrain_sample()
            if keys is None:
                return
        if self._trainer is None:
            from luma_pl.threads import default_num_threads

            self._trainer = BackgroundTrainer(threads=default_num_threads())
        c = self.cfg
        # a cheap mode starts from the index in use: its quantizers are those at the job's start even
        # after a save and load (codes are added meanwhile, centroids and codebooks never change)
        self._trainer.submit(self.originals.get(keys), base=self.warm.index, **self.warm.retrain_params())
        self.retrain_keys = np.asarray(keys, np.int64)
        self.retrain_at = self.counters["insert_calls"] + c.retrain_lag_inserts if at is None else int(at)
        # the worker's copies count against the warm budget until the install: the sample, the base
        # quantizers it starts from and the index it builds
        self.warm.worker_bytes = int(len(keys) * c.dim * 4 + 2 * self.warm.gens[-1].fixed_bytes(c.dim))

    def _install_retrained(self) -> None:
        """Install the background index (waiting for the worker if it is not done), see ``_install``."""
        t = time.perf_counter()
        if not self._trainer.done:
            self.counters["retrain_waits"] += 1
        index = self._trainer.result()
        self.counters["retrain_wait_ms"] += int(1000 * (time.perf_counter() - t))
        sample = self.originals.get(self.retrain_keys)
        self.retrain_keys, self.retrain_at = np.empty(0, np.int64), -1
        self.warm.worker_bytes = 0
        self._install(index, sample, t)

    # ------------------------------------------------------------------ migration
    def promote(self, ids) -> None:
        """Move warm/buffer ids to hot with their exact originals (LRU hot items are demoted)."""
        keys = self._keys_of(ids, (WARM, BUFFER), "promote")
        if len(keys) > self.hot_capacity():
            raise ValueError(f"cannot promote {len(keys)} ids: the hot budget holds {self.hot_capacity()}")
        self._remove_keys(keys)
        self.locations[keys] = REPLACED  # in transit: neither tier nor victim candidate
        self._to_hot(keys, self.originals.get(keys))
        self.counters["promotions"] += len(keys)
        self._after_warm_change()

    def demote(self, ids) -> None:
        """Move hot ids to the warm tier (PQ-encoded once it is trained)."""
        self._demote_keys(self._keys_of(ids, (HOT,), "demote"))
        self._after_warm_change()

    def evict(self, ids) -> None:
        """Drop live ids from the memory; they stay known (location 'evicted') and are counted."""
        self._evict_keys(self._keys_of(ids, (HOT, WARM, BUFFER), "evict"))

    def migrate(self) -> dict[str, int]:
        """One check of the memory's own ``HitMigration`` (``self.migration``, the one migration rule;
        see ``luma_pl.memory.migration``): hits recorded since the last check are counted per id;
        warm items whose count reaches ``promote_min_hits`` are promoted (most counted first, at most
        ``migrate_max_moves`` and half the hot capacity per check), hot items that are not heavy and
        had no hit for ``migrate_idle_checks`` checks are demoted (at most ``migrate_max_moves``),
        then ``audit()``. Returns ``{"promoted": n, "demoted": m}``.

        Run automatically every ``migrate_every_n_searches`` recorded searches when that setting is
        > 0 (default 0: the caller decides). Inside a Lightning run, ``callbacks/tier_migration.py``
        schedules its own ``HitMigration`` (same rule); it refuses a memory with
        ``migrate_every_n_searches > 0``, so two schedulers never fight over the hot tier."""
        return self.migration.check(self)

    # ------------------------------------------------------------------ search
    @property
    def zeta_max(self) -> float:
        if self._zeta_max is None:
            warm = self.keys_in(WARM)
            self._zeta_max = float(self.zeta[warm].max()) if len(warm) else 0.0
        return self._zeta_max

    def search(self, queries, k: int, oversample: int | None = None, rescore: bool = True,
               record_hits: bool = True) -> SearchResult:
        """Top-k over all tiers for (Q, d) queries. With ``rescore``, the warm IVF returns
        oversample*k PQ candidates (default: ``cfg.resolved_oversample`` of the warm size), re-scored
        exactly from the originals (zeta 0)."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k={k!r} is invalid; ask for k >= 1 results")
        q, os_ = self._search_args(queries, oversample)
        return self._search_clamped(q, int(k), os_, rescore, record_hits, warn=True)

    def _search_args(self, queries, oversample: int | None) -> tuple[np.ndarray, int]:
        """Validated (Q, d) float32 queries and the oversample factor to use."""
        q = self._check_vectors(queries, None, name="queries", unit=False)
        os_ = self.cfg.resolved_oversample(self.warm.ivf_count) if oversample is None else int(oversample)
        if os_ < 1:
            raise ValueError(f"oversample={oversample} is invalid; use >= 1")
        return q, os_

    def _search_clamped(self, q: np.ndarray, k: int, os_: int, rescore: bool, record_hits: bool,
                        warn: bool) -> SearchResult:
        """Search with k clamped to the live items, the result padded back to k columns. ``warn``:
        ShardedMemory passes False, since a shard holding fewer than k is normal there (it warns about
        the whole memory's count instead)."""
        # more PQ candidates than warm codes cannot exist; ivf_count + 1 keeps the last column empty
        # (pq_floor -inf, "the probed lists held no more") exactly as an uncapped oversample*k does
        kw = min(k * os_ if rescore else k, self.warm.ivf_count + 1)
        kc = self._clamp_k(k, warn)
        if kc == k:
            return self._search(q, k, kw, rescore, record_hits)
        # an empty memory searches with k=1 (nothing found, counters as before) and pads as well
        return pad_result(self._search(q, max(kc, 1), kw, rescore, record_hits), k)

    def _clamp_k(self, k: int, warn: bool = True) -> int:
        """min(k, live items), warning once per memory when that clamps. Every tier and the rescoring
        allocate (Q, k)-sized (the warm rescoring (Q, oversample*k, d)-sized) buffers, so a k far above
        the item count (k=100000 on 1,000 items) asked for gigabytes to return at most 1,000 hits."""
        live = len(self)
        if warn and k > live and not self._warned_k_clamp:
            self._warned_k_clamp = True
            warnings.warn(f"search k={k} exceeds the {live} live items in this memory; searching with k={live} "
                          "and padding the other columns with id -1 / score -inf. Pass k <= len(memory) "
                          "(this warning is shown once per memory)", stacklevel=4)
        return min(k, live)

    def _search(self, q: np.ndarray, k: int, kw: int, rescore: bool, record_hits: bool) -> SearchResult:
        """``search`` with validated queries, 1 <= k <= max(1, live items) and kw warm candidates, so
        every buffer is bounded by the memory's size, not by the k asked for."""
        # candidate parts (scores (Q, c), keys (Q, c), tier code, zeta (Q, c) or None); empty tiers skipped
        parts = []
        floor = np.full(len(q), -np.inf, np.float32) if rescore else None
        if len(self.hot):
            hs, hk = self.hot.search(q, k)
            parts.append((hs, hk, HOT, None))
        if self.warm.ivf_count:
            ws, wk, wfloor = self.warm.search_ivf(q, kw)
            valid = wk >= 0
            safe = np.where(valid, wk, 0)
            if rescore:  # exact scores from the originals: these hits carry zeta 0
                floor = wfloor  # per generation: the k-th PQ score it returned (see WarmTier.search_ivf)
                cand = self.originals.get(safe.ravel()).reshape(*safe.shape, -1)  # (Q, c, d)
                exact = np.matmul(cand, q[:, :, None])[..., 0]  # batched gemv (BLAS), not einsum
                ws = np.where(valid, exact, -np.inf).astype(np.float32)
                parts.append((ws, wk, WARM, None))
            else:
                parts.append((ws, wk, WARM, np.where(valid, self.zeta[safe], 0).astype(np.float32)))
        if len(self.warm.buf_ids):
            bs, bk = self.warm.search_buffer(q, k)
            parts.append((bs, bk, BUFFER, None))
        nq = len(q)
        if not parts:
            return SearchResult(np.full((nq, k), -1, np.int64), np.full((nq, k), -np.inf, np.float32),
                                np.full((nq, k), -1, np.int8), np.zeros((nq, k), np.float32), self.zeta_max, floor)
        scores = np.concatenate([p[0] for p in parts], axis=1)
        keys = np.concatenate([p[1] for p in parts], axis=1)
        tiers = np.concatenate([np.full(p[1].shape, p[2], np.int8) for p in parts], axis=1)
        zeta = np.concatenate([p[3] if p[3] is not None else np.zeros(p[1].shape, np.float32) for p in parts], axis=1)
        if scores.shape[1] < k:  # fewer candidates than k: pad
            pad = k - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            keys = np.pad(keys, ((0, 0), (0, pad)), constant_values=-1)
            tiers = np.pad(tiers, ((0, 0), (0, pad)), constant_values=-1)
            zeta = np.pad(zeta, ((0, 0), (0, pad)))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        row = np.arange(nq)[:, None]
        scores, keys, tiers, zeta = scores[row, top], keys[row, top], tiers[row, top], zeta[row, top]
        found = keys >= 0
        if not found.all():
            tiers[~found] = -1
            zeta[~found] = 0
        ids = np.where(found, self.ids[np.where(found, keys, 0)], -1)
        zmax = self.zeta_max
        if record_hits and found.any():
            self.counters["tick"] += 1
            hit = keys[found]
            np.add.at(self.hits, hit, 1)
            self.last_access[hit] = self.counters["tick"]
        if record_hits:
            self.counters["searches"] = self.counters.get("searches", 0) + 1
            every = self.cfg.migrate_every_n_searches
            if every and self.counters["searches"] % every == 0:
                moved = self.migrate()
                self.counters["auto_migrations"] += moved["promoted"] + moved["demoted"]
        return SearchResult(ids, scores.astype(np.float32), tiers, zeta, zmax, floor)

    # ------------------------------------------------------------------ accounting
    def bytes_by_tier(self) -> dict[str, int]:
        """RAM bytes. 'hot' and 'warm' are what the budgets govern, each including its items' share of
        the bookkeeping (``ITEM_BOOKKEEPING_BYTES`` per live item) and faiss' spare list capacity.
        'bookkeeping' is what no budget covers: the per-key arrays' spare capacity, the hot tier's
        id -> row slots, and the arrays + ``key_of`` entries of evicted/replaced ids (memory of every id
        ever admitted). The id map's real size (``IdMap.nbytes``) is used for that line, so hot + warm +
        bookkeeping is an upper bound of the Python-side total. 'originals_disk' is on disk."""
        live = len(self.hot) + len(self.warm)
        arrays = len(self.ids) * _PER_KEY_ARRAY_BYTES + self.hot.slot_nbytes()
        dict_bytes = self.key_of.nbytes
        total_book = arrays + dict_bytes
        outside = max(0, total_book - live * ITEM_BOOKKEEPING_BYTES)
        return {"hot": self.hot.nbytes(), "warm": self.warm.nbytes(), "bookkeeping": int(outside),
                "originals_disk": self.num_keys * self.cfg.dim * 4}

    def stats(self) -> dict[str, int | float]:
        return {**self.counters, "hot": len(self.hot), "warm": self.warm.ivf_count,
                "buffer": len(self.warm.buf_ids), "evicted": len(self.keys_in(EVICTED)),
                "hot_tombstones": self.hot.tombstones, "hot_rebuilds": self.hot.rebuilds,
                "hot_segments": len(self.hot.segments), "hot_mutable_rows": self.hot.mutable_rows,
                "hot_seals": self.hot.seals, "hot_segment_drops": self.hot.drops,
                "warm_trainings": self.warm.trainings, "warm_generations": len(self.warm.gens),
                "warm_merges": self.warm.merges, "zeta_max": self.zeta_max}

    def audit(self) -> dict[str, int]:
        """Check the invariants; raise AssertionError naming the first broken one."""
        n = self.num_keys
        loc = self.locations[:n]
        def check(cond, what):
            if not cond:
                raise AssertionError(f"memory audit failed: {what}")
        hot_keys = self.hot.audit()  # the segments agree with the hot tier's own key map
        check(np.array_equal(np.sort(hot_keys), self.keys_in(HOT)), "hot index keys != keys located hot")
        check(set(self.warm.buf_ids.tolist()) == set(self.keys_in(BUFFER).tolist()), "buffer keys != keys located buffer")
        ivf = self._ivf_keys()
        check(len(ivf) == self.warm.ivf_count and set(ivf.tolist()) == set(self.keys_in(WARM).tolist()),
              "warm IVF keys != keys located warm")
        live_ids = {int(self.ids[k]) for k in np.flatnonzero(loc < REPLACED)}
        check(live_ids == set(self.key_of) and all(self.ids[k] == i for i, k in self.key_of.items()),
              "id map disagrees with per-key arrays")
        check(len(self.hot) <= self.cfg.hot_max_items and self.hot.nbytes() <= self.cfg.hot_max_bytes, "hot budget exceeded")
        check(len(self.warm) <= self.cfg.warm_max_items and self.warm.nbytes() <= self.cfg.warm_max_bytes, "warm budget exceeded")
        counts = {TIER_NAMES[c]: int((loc == c).sum()) for c in TIER_NAMES}
        check(sum(counts.values()) == len(self.key_of), "some id is in no place or in two")
        return counts

    def _ivf_keys(self) -> np.ndarray:
        parts = [self.warm.generation_keys(i) for i in range(len(self.warm.gens))]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def close(self) -> None:
        if self._trainer is not None:
            self._trainer.close()
        self.originals.close()
        if self._owns_dir:
            shutil.rmtree(self.directory, ignore_errors=True)
