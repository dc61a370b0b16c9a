"""The stream runtime: the one object a replayed stream runs through, in training and in evaluation.

``StreamRuntime`` owns

- the **bridge** (``StreamBridge``: streaming Procrustes or a learned linear / orthogonal / MLP
  bridge, frozen or still learning),
- the **memory** (``TieredMemory``, or ``ShardedMemory`` under DDP: the Memory protocol of
  ``luma_pl.memory.protocol``), built in one place (``StreamRuntime.build``),
- the **replay rule** (``SeenIds.first_arrivals``: an event id seen before is skipped and counted,
  never inserted twice),
- **admission** (none: every first arrival is inserted; an ``AdmissionPipeline`` in ``items`` mode:
  heavy hitters go hot, the rest warm, the decision is the ``hot=`` mask of ``insert``; a
  ``PrototypeIndex`` in ``prototypes`` mode: the memory holds the counter's centroids),
- **migration** (a ``HitMigration``: the one promotion/demotion rule, fed by the hits that
  ``query`` / ``search`` record),

and answers two calls, the same in ``Trainer.fit`` (``BridgeModuleBase.training_step``) and
``Trainer.test`` (``StreamEvaluator.test_step``):

- ``ingest(ids, x)``: one batch of item vectors (ids from ``batch["id"]``: ``luma_pl.stream.ids``).
  ``replicated=False`` (training: each rank replays its own share of the stream): the rows of every
  rank are all-gathered in rank order first, so every rank runs the identical admission on the
  identical global batch, and the decision's checksum is all-reduced (min == max) so a divergence
  raises instead of silently splitting the replicated state. ``replicated=True`` (evaluation: every
  rank replays the whole stream): the batch is already global. Either way a ``ShardedMemory`` keeps
  its share of each insert, and ``ingest`` is a collective under DDP: every rank calls it on every
  batch (with 0 rows on a padding batch).
- ``query(a, k)``: source-space queries bridged, searched (k + 1 candidates: the certificate compares
  the top-k with the next one), and certified (Safe@1 / Safe@k at the ε the bridge reports): the one
  certify sequence (``Answer``). A collective on a ``ShardedMemory``.

The callbacks configure and schedule what the runtime owns, in fit and in test alike:
``HeavyHitterAdmission`` gives it its admission (``use_admission``) and logs the counters,
``TierMigration`` gives it its ``HitMigration`` (``use_migration``) and runs ``migrate()`` on
schedule, ``SafeAtKLogger`` certifies its probe queries through ``query``, ``MemoryCheckpoint`` saves
and restores ``memory``. ``state_dict`` (ids seen, counters: arrays and primitives) travels in the
holder's checkpoint.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from luma_pl.admission.distributed import agree, allgather_rows
from luma_pl.stream.bridge import StreamBridge
from luma_pl.stream.pool import SeenIds
from luma_pl.telemetry import functional as TF
from luma_pl.telemetry import safe_at_k as S

DISTANCES = ("auto", "vectors", "cap")


@dataclasses.dataclass(frozen=True)
class Ingested:
    """What ``ingest`` did with a batch."""

    ids: np.ndarray
    """(n,) int64 ids of the first arrivals (global batch), in stream order."""
    replayed: int
    """Rows of the batch whose id was seen before (skipped, counted)."""
    decision: object | None
    """The admission ``Decision`` (keep / labels / heavy per first arrival); None without admission."""


@dataclasses.dataclass(frozen=True)
class Answer:
    """What ``query`` answered: the search, its certificate and the ε it was certified at."""

    queries: torch.Tensor
    """(Q, d_c) float32 unit bridged queries."""
    result: object
    """``SearchResult`` with ``candidates`` columns (ids -1 past the live items)."""
    certificate: TF.Certificate
    epsilon: S.EpsilonChoice
    epsilon_q: torch.Tensor
    """(Q,) float64 per-query ε in normalised-score units."""
    search_seconds: float
    """Wall time of the batched search alone."""


class StreamRuntime:
    """See the module docstring. ``memory``: TieredMemory or ShardedMemory; ``bridge``: a
    ``StreamBridge`` (None: ingest only, ``query`` refused); ``replicated``: every rank sees every
    batch (evaluation) instead of its own share (training)."""

    def __init__(self, memory, bridge: StreamBridge | None = None, replicated: bool = False) -> None:
        self._memory = memory
        self.bridge = bridge
        self.replicated = bool(replicated)
        self.admission = None
        """``AdmissionPipeline`` (items or prototypes mode), set by ``use_admission``."""
        self.prototypes = None
        """``PrototypeIndex`` in prototypes mode (answers ``search``)."""
        self.migration = None
        """``HitMigration``, set by ``use_migration``."""
        self.seen = SeenIds()
        self.counts = {"arrivals": 0, "ingested": 0, "replayed": 0, "queries": 0}

    @classmethod
    def build(cls, memory_cfg, memory_dir: str | None = None, bridge: StreamBridge | None = None,
              replicated: bool = False) -> StreamRuntime:
        """The one place a stream's memory is made: a ``TieredMemory`` in ``memory_dir/rank<r>`` (None:
        a temporary folder), wrapped in a ``ShardedMemory`` when a process group of more than one
        rank exists (call it where the process group is up: ``setup``)."""
        from luma_pl.memory import TieredMemory
        from luma_pl.memory.sharded import ShardedMemory
        from luma_pl.ranks import rank_and_world

        rank, world = rank_and_world()
        local = TieredMemory(memory_cfg, directory=None if memory_dir is None else f"{memory_dir}/rank{rank}")
        return cls(ShardedMemory(local) if world > 1 else local, bridge, replicated)

    # --- what it owns -------------------------------------------------------------------------
    @property
    def memory(self):
        return self._memory

    @memory.setter
    def memory(self, memory) -> None:
        """A restored memory (``MemoryCheckpoint``) replaces the current one everywhere it is used."""
        self._memory = memory
        if self.prototypes is not None:
            self.prototypes.memory = memory

    def use_admission(self, config, prototype_dir: str | None = None):
        """Admission by ``config`` (``AdmissionConfig``) from now on; returns the pipeline. Refused
        when admission is already set (two configurations of one stream: say which one to keep)."""
        from luma_pl.admission.pipeline import AdmissionPipeline, PrototypeIndex

        if self.admission is not None:
            raise ValueError("StreamRuntime.use_admission: this stream already has an admission pipeline "
                             f"(mode={self.admission.cfg.mode!r}); configure admission once: either the "
                             "top-level admission group / model.admission or one HeavyHitterAdmission callback")
        self.admission = AdmissionPipeline(config, dim=self.memory.dim)
        if config.mode == "prototypes":
            # the memory holds the centroids; every rank keeps the same members (identical decisions)
            self.prototypes = PrototypeIndex(self.admission, self.memory, directory=prototype_dir)
        return self.admission

    def use_migration(self, policy) -> None:
        """``policy``: the ``HitMigration`` that ``migrate()`` runs (its state stays with its owner)."""
        if self.migration is not None and self.migration is not policy:
            raise ValueError("StreamRuntime.use_migration: this stream already has a migration policy; configure "
                             "one TierMigration callback")
        self.migration = policy

    # --- the two calls ------------------------------------------------------------------------
    def ingest(self, ids: np.ndarray, x: np.ndarray) -> Ingested:
        """Ingest item rows ``x`` (n, d) with their event ids (n,). A collective under DDP."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        x = np.asarray(x, np.float32).reshape(len(ids), -1) if len(ids) else np.zeros((0, self.memory.dim),
                                                                                          np.float32)
        if x.shape[1] != self.memory.dim:
            raise ValueError(f"ingest: the item rows have d={x.shape[1]} but the memory holds d={self.memory.dim}; "
                             "ingest the space the memory was configured for (memory.dim)")
        if not self.replicated:
            ids, x, _ = allgather_rows(ids, x)  # the global batch, identical on every rank
        fresh = self.seen.first_arrivals(ids)
        replayed = int(len(ids) - fresh.sum())
        ids, x = ids[fresh], x[fresh]
        decision = None
        if self.prototypes is not None:
            decision = self.prototypes.ingest(ids, x)
        elif self.admission is not None:
            decision = self.admission.ingest_items(self.memory, ids, x) if len(ids) else self.admission.step(x)
        elif len(ids):
            self.memory.insert(ids, x)
        if decision is not None:
            agree(decision.checksum(), "the admission decision")
        self.counts["arrivals"] += int(len(fresh))
        self.counts["ingested"] += int(len(ids))
        self.counts["replayed"] += replayed
        return Ingested(ids, replayed, decision)

    def learn(self, s: torch.Tensor, c: torch.Tensor) -> None:
        """One bridge step on this rank's anchor pairs (a collective under DDP; see ``StreamBridge``)."""
        self.bridge.learn(s, c)

    def ready(self) -> bool:
        """The bridge maps queries (a Procrustes bridge only after its first refresh)."""
        return self.bridge is not None and self.bridge.ready()

    def search(self, q: np.ndarray, k: int, rescore: bool = True, record_hits: bool = True):
        """``SearchResult`` for unit canonical-space queries ``q`` (Q, d_c). Prototypes mode: exact
        scores of the probed clusters' members (ζ = 0); members of unprobed clusters are items the
        approximate search missed, outside the certificate as with IVF's unprobed lists
        (docs/design.md section 6)."""
        from luma_pl.memory.policy import HOT
        from luma_pl.memory.tiered import SearchResult

        q = np.ascontiguousarray(q, np.float32)
        if self.prototypes is None:
            return self.memory.search(q, k, rescore=rescore, record_hits=record_hits)
        ids, scores = self.prototypes.search(q, k)
        return SearchResult(ids, scores, np.where(ids >= 0, HOT, -1).astype(np.int8),
                            np.zeros(ids.shape, np.float32), 0.0)

    def certificate_distances(self, asked: str = "auto") -> str:
        """'vectors' (true / x̂ pair distances) needs every candidate's vector in this process: one
        process and no prototypes; otherwise pair distances are capped by 2 ('cap')."""
        if asked not in DISTANCES:
            raise ValueError(f"distances={asked!r}: use one of {DISTANCES}")
        if asked == "auto" or self.prototypes is not None:
            return "vectors" if not self.memory.distributed and self.prototypes is None else "cap"
        return asked

    @torch.no_grad()
    def query(self, a: torch.Tensor | np.ndarray, k: int, candidates: int | None = None, rescore: bool = True,
              record_hits: bool = True, epsilon_source: str = "interval", epsilon_value: float | None = None,
              distances: str = "auto") -> Answer:
        """Bridge source queries ``a`` (Q, d_s), search ``candidates`` (default k + 1) and certify the
        top-k at the ε of ``epsilon_source`` (``luma_pl.telemetry.safe_at_k.choose_epsilon``)."""
        if not self.ready():
            raise RuntimeError("StreamRuntime.query: the bridge maps nothing yet (a Procrustes bridge before its "
                               "first refresh); check ready() first")
        candidates = k + 1 if candidates is None else int(candidates)
        if candidates < k + 1:
            raise ValueError(f"candidates={candidates} must be >= k + 1 = {k + 1}: Safe@k needs the (k+1)-th score")
        a = torch.as_tensor(np.asarray(a, np.float32) if isinstance(a, np.ndarray) else a).float()
        module = self.bridge.module
        q, a_norm, u_norm = S.bridge_queries(module, a)
        t = time.perf_counter()
        res = self.search(q.numpy(), candidates, rescore=rescore, record_hits=record_hits)
        seconds = time.perf_counter() - t
        choice = S.choose_epsilon(module, epsilon_source, epsilon_value)
        eps_q = S.query_epsilon(choice, a_norm, u_norm)
        mode = self.certificate_distances(distances)
        cert = S.certify_search(res, k, eps_q, memory=self.memory.shard if mode == "vectors" else None,
                                rescored=rescore, distances=mode)
        self.counts["queries"] += len(a)
        return Answer(q, res, cert, choice, eps_q, seconds)

    def migrate(self) -> dict[str, int]:
        """One check of the migration policy on this rank's shard (promotions / demotions)."""
        if self.migration is None:
            raise RuntimeError("StreamRuntime.migrate: no migration policy; add a TierMigration callback")
        return self.migration.check(self.memory.shard)

    # --- checkpoint state: arrays and primitives ------------------------------------------------
    def state_dict(self) -> dict:
        return {"seen": self.seen.sorted(), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        seen = state.get("seen", np.zeros(0, np.int64))
        seen = seen.numpy() if isinstance(seen, torch.Tensor) else seen
        self.seen = SeenIds()
        self.seen.load_state_dict({"ids": seen})
        for k in self.counts:
            self.counts[k] = int(state.get("counts", {}).get(k, 0))
