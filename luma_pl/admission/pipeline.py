"""The Streaming RAG admission pipeline: prefilter -> cluster -> heavy-hitter counter -> index update.

``AdmissionPipeline.step(x)`` makes the decisions for a batch of arrivals (and updates the
prefilter window, the centroids, the counter and the adaptive (u_t, B_t)); it touches no index.
Two index-update modes use those decisions:

* ``items`` (``ingest_items``): every arrival that passes the prefilter is inserted into a
  ``TieredMemory``; its cluster being a heavy hitter sends it hot, otherwise warm
  (``HeavyHitterPolicy`` is the memory's policy and ranks victims by the counter). Budgets and
  evictions are the memory's, and counted there.
* ``prototypes`` (``PrototypeIndex``): the memory holds the unit centroids of the counter's
  labels (id = label), upserted every ``upsert_interval`` arrivals; queries keep running on the
  previous prototypes meanwhile. Each tracked label keeps its member ids (8 bytes each in RAM;
  the member vectors live in an on-disk originals store), so a query probes the nearest
  prototypes and re-scores their members exactly. Arrivals whose label is not tracked are not
  kept, and a label that leaves the counter drops its members: both counted.

Accounting: ``arrivals == dropped + passed``; in items mode ``passed == memory.counters['inserted']``
and every inserted item is hot, warm, buffer or evicted (``memory.audit()``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from luma_pl.admission.adaptive import AdaptiveConfig, AdaptiveController
from luma_pl.admission.clustering import ClusterConfig, OnlineClusterer, normalise_rows
from luma_pl.admission.heavy_hitters import CounterConfig, HeavyHitterCounter
from luma_pl.admission.policy import VICTIM_RANKINGS, HeavyHitterPolicy
from luma_pl.admission.prefilter import Prefilter, PrefilterConfig
from luma_pl.configuration import StrictConfig, require

MODES = ("items", "prototypes")


@dataclasses.dataclass
class AdmissionConfig(StrictConfig):
    """Settings of the whole admission pipeline."""

    mode: str = "items"
    """'items' (heavy-hitter clusters' items go hot, the rest warm) or 'prototypes' (the index holds centroids)."""
    prefilter: PrefilterConfig = dataclasses.field(default_factory=PrefilterConfig)
    """Multi-vector cosine prefilter."""
    cluster: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    """Online clustering."""
    counter: CounterConfig = dataclasses.field(default_factory=CounterConfig)
    """Heavy-hitter counter over cluster labels."""
    adaptive: AdaptiveConfig = dataclasses.field(default_factory=AdaptiveConfig)
    """Adaptive (u_t, B_t); disabled = static (u, B)."""
    upsert_interval: int = 1000
    """prototypes mode: arrivals between two prototype upserts (T)."""
    probe: int = 8
    """prototypes mode: prototypes probed per query before exact re-scoring of their members."""
    members_per_label: int = 1024
    """prototypes mode: members kept per tracked label (the newest; older ones are dropped and
    counted); bounds the member store and the checkpoint on a never-ending stream. 0 = unbounded."""
    victims: str = "quota"
    """items mode: how the memory's victims are ranked when a tier is full: 'quota' (each tracked
    label keeps a count-proportional share of the budget, its newest items) or 'label_count' (whole
    labels, smallest count first). See ``luma_pl.admission.policy``."""

    def validate(self) -> None:
        for name, cls in (("prefilter", PrefilterConfig), ("cluster", ClusterConfig), ("counter", CounterConfig),
                          ("adaptive", AdaptiveConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls.from_dict(getattr(self, name)))
            getattr(self, name).validate()
        o = "AdmissionConfig"
        require(self.mode in MODES, o, "mode", self.mode, f"use one of {MODES}")
        require(self.upsert_interval >= 1, o, "upsert_interval", self.upsert_interval, "use T >= 1 arrivals")
        require(self.probe >= 1, o, "probe", self.probe, "use >= 1 prototypes per query")
        require(self.members_per_label >= 0, o, "members_per_label", self.members_per_label,
                "use >= 1 members per label, or 0 for no cap")
        require(self.victims in VICTIM_RANKINGS, o, "victims", self.victims, f"use one of {VICTIM_RANKINGS}")
        require(self.cluster.m > self.counter.capacity or self.mode == "prototypes", o, "counter.capacity",
                self.counter.capacity, f"items mode needs B < m={self.cluster.m}, else every cluster is heavy")


@dataclasses.dataclass
class Decision:
    """Per arrival of a batch."""

    keep: np.ndarray  # (n,) bool: passed the prefilter
    labels: np.ndarray  # (n,) int64 cluster label, -1 where dropped
    heavy: np.ndarray  # (n,) bool: label tracked by the counter after this arrival

    def checksum(self) -> int:
        """A cheap fingerprint to compare the decision across ranks."""
        v = np.concatenate([self.keep.astype(np.int64), self.labels, self.heavy.astype(np.int64)])
        return int((v * (np.arange(len(v)) % 65521 + 1)).sum() % (1 << 61)) if len(v) else 0


class AdmissionPipeline:
    def __init__(self, config: AdmissionConfig, dim: int, basis: np.ndarray | None = None):
        config.validate()
        self.cfg = config
        self.dim = dim
        self.prefilter = Prefilter(config.prefilter, dim, basis)
        self.clusterer = OnlineClusterer(config.cluster, dim)
        self.counter = HeavyHitterCounter(config.counter)
        self.adaptive = AdaptiveController(config.adaptive)
        self.policy = HeavyHitterPolicy(self.counter, config.victims)
        self.stats = {"arrivals": 0, "dropped": 0, "passed": 0, "heavy": 0}

    def step(self, x: np.ndarray) -> Decision:
        """Decisions for (n, d) arrivals in stream order."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}), got {x.shape}")
        n = len(x)
        x = normalise_rows(x)  # once: the prefilter's cosines and the clustering both need unit rows
        keep = self.prefilter.step(x, unit=True)
        labels = np.full(n, -1, np.int64)
        heavy = np.zeros(n, bool)
        if keep.any():
            lab = self.clusterer.assign_update(x[keep], unit=True)
            h, novel = self.counter.update(lab)
            self.adaptive.step(self.counter, novel)
            labels[keep], heavy[keep] = lab, h
        self.stats["arrivals"] += n
        self.stats["dropped"] += int(n - keep.sum())
        self.stats["passed"] += int(keep.sum())
        self.stats["heavy"] += int(heavy.sum())
        return Decision(keep, labels, heavy)

    def ingest_items(self, memory, ids: np.ndarray, x: np.ndarray) -> Decision:
        """items mode: decide, then insert the passed arrivals (heavy -> hot) into ``memory``
        (a TieredMemory, or a ShardedMemory that keeps its share)."""
        ids = np.asarray(ids, np.int64)
        d = self.step(x)
        memory.shard.policy = self.policy  # idempotent; re-attaches after a memory was restored
        if d.keep.any():
            memory.insert(ids[d.keep], np.asarray(x, np.float32)[d.keep], hot=d.heavy[d.keep],
                          labels=d.labels[d.keep])
        return d

    def metrics(self) -> dict[str, float]:
        c = self.counter
        return {**{f"admission/{k}": float(v) for k, v in self.stats.items()},
                "admission/prefilter_dropped": float(self.prefilter.dropped),
                "admission/labels_tracked": float(len(c)), "admission/u_t": float(c.admit_prob),
                "admission/B_t": float(c.capacity),
                **{f"admission/label_{k}": float(v) for k, v in c.stats.items()}}

    def state_dict(self) -> dict:
        return {"prefilter": self.prefilter.state_dict(), "clusterer": self.clusterer.state_dict(),
                "counter": self.counter.state_dict(), "adaptive": self.adaptive.state_dict(),
                "policy": self.policy.state_dict(), "stats": dict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        self.prefilter.load_state_dict(state.get("prefilter", {}))
        self.clusterer.load_state_dict(state.get("clusterer", {}))
        self.counter.load_state_dict(state.get("counter", {}))
        self.adaptive.load_state_dict(state.get("adaptive", {}))
        self.policy.load_state_dict(state.get("policy", {}))
        for k in self.stats:
            self.stats[k] = int(state.get("stats", {}).get(k, 0))


class PrototypeIndex:
    """prototypes mode over a TieredMemory (or ShardedMemory) that holds the centroids (ids = labels)."""

    def __init__(self, pipeline: AdmissionPipeline, memory, directory: str | None = None):
        import tempfile

        from luma_pl.memory import OriginalsStore

        self.pipeline = pipeline
        self.memory = memory
        self._owns_dir = directory is None
        self._dir = tempfile.mkdtemp(prefix="luma_protos_") if directory is None else directory
        self.store = OriginalsStore(self._dir, pipeline.dim)  # member vectors, on disk
        self.members: dict[int, list[tuple[int, int]]] = {}  # label -> [(item id, store row)], oldest first
        self.since_upsert = 0
        self.indexed: set[int] = set()
        self.stats = {"kept": 0, "not_admitted": 0, "member_drops": 0, "upserts": 0}

    def ingest(self, ids: np.ndarray, x: np.ndarray) -> Decision:
        ids = np.asarray(ids, np.int64)
        x = np.asarray(x, np.float32)
        d = self.pipeline.step(x)
        take = d.keep & d.heavy
        self.stats["not_admitted"] += int((d.keep & ~d.heavy).sum())
        if take.any():
            rows = self.store.append(x[take])
            for i, lab, r in zip(ids[take].tolist(), d.labels[take].tolist(), rows.tolist(), strict=True):
                self.members.setdefault(lab, []).append((i, r))
            self.stats["kept"] += int(take.sum())
        counter = self.pipeline.counter
        for lab in [lab for lab in self.members if lab not in counter.count]:
            self.stats["member_drops"] += len(self.members.pop(lab))
        cap = self.pipeline.cfg.members_per_label
        if cap:
            for lab in np.unique(d.labels[take]).tolist():
                over = len(self.members.get(lab, ())) - cap
                if over > 0:  # the oldest members go first
                    del self.members[lab][:over]
                    self.stats["member_drops"] += over
        self.since_upsert += len(x)
        if self.since_upsert >= self.pipeline.cfg.upsert_interval:
            self.upsert()
        return d

    def held(self) -> int:
        """Members retrievable now."""
        return sum(len(v) for v in self.members.values())

    def upsert(self) -> None:
        """Write the tracked labels' current centroids into the index; evict untracked ones."""
        labels = np.array(sorted(lab for lab in self.members if self.members[lab]), np.int64)
        gone = np.array(sorted(self.indexed - set(labels.tolist())), np.int64)
        if len(gone):
            self.memory.evict(gone)
        if len(labels):
            self.memory.insert(labels, self.pipeline.clusterer.unit_centroids(labels), tier="hot", upsert=True)
        self.indexed = set(labels.tolist())
        self.since_upsert = 0
        self.stats["upserts"] += 1

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (Q, k), scores (Q, k)): probe the nearest prototypes, re-score their members exactly."""
        q = np.asarray(queries, np.float32)
        out_ids = np.full((len(q), k), -1, np.int64)
        out_sc = np.full((len(q), k), -np.inf, np.float32)
        if not self.indexed:
            return out_ids, out_sc
        res = self.memory.search(q, self.pipeline.cfg.probe, record_hits=False)
        for qi in range(len(q)):
            mem = [m for lab in res.ids[qi].tolist() if lab >= 0 for m in self.members.get(lab, ())]
            if not mem:
                continue
            arr = np.asarray(mem, np.int64)
            sc = self.store.get(arr[:, 1]) @ q[qi]
            top = np.argsort(-sc, kind="stable")[:k]
            out_ids[qi, : len(top)] = arr[top, 0]
            out_sc[qi, : len(top)] = sc[top]
        return out_ids, out_sc

    def nbytes(self) -> int:
        """RAM: the prototype memory's tiers + 16 bytes per member (id + store row)."""
        b = self.memory.shard.bytes_by_tier()
        return int(b["hot"] + b["warm"] + 16 * self.held())

    # -- checkpoint state: arrays and primitives; the member vectors travel with it -------------
    def state_dict(self) -> dict:
        labs = [lab for lab, m in self.members.items() for _ in m]
        flat = [pair for m in self.members.values() for pair in m]
        rows = np.array([r for _, r in flat], np.int64)
        return {"member_label": np.array(labs, np.int64), "member_id": np.array([i for i, _ in flat], np.int64),
                "member_vec": self.store.get(rows) if len(rows) else np.zeros((0, self.pipeline.dim), np.float32),
                "indexed": np.array(sorted(self.indexed), np.int64), "since_upsert": int(self.since_upsert),
                **{f"stat_{k}": int(v) for k, v in self.stats.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore members (their vectors are appended to this index's store) and counters. The
        centroid memory itself is restored by MemoryCheckpoint, or rebuilt by the next upsert."""
        labs = np.asarray(state.get("member_label", np.empty(0)), np.int64)
        ids = np.asarray(state.get("member_id", np.empty(0)), np.int64)
        vec = np.asarray(state.get("member_vec", np.zeros((0, self.pipeline.dim))), np.float32)
        if not (len(labs) == len(ids) == len(vec)):
            raise ValueError(f"prototype state holds {len(labs)} labels, {len(ids)} ids and {len(vec)} vectors; "
                             "the checkpoint is corrupt")
        rows = self.store.append(vec.reshape(len(vec), self.pipeline.dim)) if len(vec) else np.empty(0, np.int64)
        self.members = {}
        for lab, i, r in zip(labs.tolist(), ids.tolist(), rows.tolist(), strict=True):
            self.members.setdefault(lab, []).append((i, r))
        self.indexed = set(np.asarray(state.get("indexed", np.empty(0)), np.int64).tolist())
        self.since_upsert = int(state.get("since_upsert", 0))
        for k in self.stats:
            self.stats[k] = int(state.get(f"stat_{k}", 0))

    def close(self) -> None:
        import shutil

        self.store.close()
        if self._owns_dir:
            shutil.rmtree(self._dir, ignore_errors=True)
