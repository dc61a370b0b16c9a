"""Streaming replay evaluation: interleaved ingest and query events through the memory and bridge.

Each replay batch (docs/architecture.md) is one step of the stream:

1. **ingest**: the batch's canonical item vectors (``item_space``) go through admission (optional)
   into the memory; under DDP each rank keeps the ids it owns (``ShardedMemory``);
2. **bridge**: the batch's anchor pairs (``source_space`` -> ``item_space``) teach the bridge
   (``fit_bridge``; any kind, see ``luma_pl.stream.bridge``: streaming Procrustes accumulates and
   refreshes, a learned linear / orthogonal / MLP bridge from a train.py checkpoint takes optimizer
   steps with its checkpointed optimizer state), or the bridge stays frozen;
3. **queries**: ``fresh_queries`` of this batch's events and ``old_queries`` drawn uniformly from
   earlier events (memory retention; a bounded reservoir sample of every earlier event, so the cost
   per batch does not grow with the stream) ask their source-space query (``query_space``),
   bridged into canonical space; the relevant item is the event's own item;
4. **telemetry**: HitRate/Recall/MRR/nDCG@k, the Safe@1/Safe@k certificate (docs/design.md section 6) with
   the ε actually used, ζ, latency, RAM per tier and the process's RSS, drops and evictions, aggregated per window of
   ``window_batches`` batches and logged (W&B / CSV through the Trainer's loggers).

DDP: every rank replays the *whole* stream (``StreamReplayDataModule(replicate=True)``), so the
global step is identical everywhere; the work is split: ids by owner rank, anchor pairs and
queries by row index. Window sums are all-reduced, so N ranks report exactly the metrics of one
process (the test checks this). The certificate under DDP bounds pair distances by 2 (``cap``):
a rank does not hold the other shards' vectors.
"""

from __future__ import annotations

import dataclasses
import math
import time

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist

from luma_pl.admission.pipeline import AdmissionConfig, AdmissionPipeline, PrototypeIndex
from luma_pl.bridge.procrustes import ProcrustesConfig, StreamingProcrustes
from luma_pl.configuration import StrictConfig, as_config, require
from luma_pl.memory import MemoryConfig, TieredMemory
from luma_pl.memory.policy import HOT
from luma_pl.memory.sharded import ShardedMemory
from luma_pl.memory.tiered import SearchResult
from luma_pl.metrics import functional as MF
from luma_pl.ranks import initialised, rank_and_world
from luma_pl.stream.bridge import StreamBridge, bridge_from_state
from luma_pl.stream.ids import batch_ids
from luma_pl.stream.pool import QueryReservoir, SeenIds
from luma_pl.telemetry import safe_at_k as S
from luma_pl.telemetry.functional import EPSILON_SOURCES
from luma_pl.telemetry.latency import LatencyHistogram, quantile
from luma_pl.telemetry.resources import resident_set_bytes

# window sums, all-reduced across ranks: one float64 vector in this order
SUMS = ("queries", "hit", "recall", "mrr", "ndcg", "safe1", "safek", "crude1",
        "eps_q", "zeta1", "margin_top2", "ingested", "fresh_queries_hit", "fresh_queries", "old_queries_hit",
        "old_queries", "duplicates", "replay_skipped", "replay_events_skipped")


@dataclasses.dataclass
class StreamEvalConfig(StrictConfig):
    """What the replay evaluation measures and how."""

    item_space: str = "minilm"
    """Batch ``emb`` key of the canonical item vectors that are ingested."""
    source_space: str = "wordllama"
    """Batch ``emb`` key of the source-space anchors (paired with ``item_space``)."""
    query_space: str = "query_wordllama"
    """Batch ``emb`` key of the source-space queries; the relevant item is the event's own item."""
    k: int = 10
    """Cut-off of every metric and of Safe@k."""
    fresh_queries: int = 32
    """Queries per batch about this batch's events."""
    old_queries: int = 32
    """Queries per batch about earlier events (uniform over all events seen so far, drawn from the
    ``query_pool`` reservoir)."""
    query_pool: int = 65536
    """Earlier events' queries kept for ``old_queries``: a uniform reservoir sample of every earlier
    event (Algorithm R), so RAM and per-batch cost stay bounded however long the stream is."""
    window_batches: int = 4
    """Batches per reported point of the time series."""
    latency_probes: int = 8
    """Queries per batch also searched one at a time, each timed on its own: the per-query latency
    percentiles (``latency_p50_ms``/``latency_p99_ms``) are of these samples, pooled over the run in
    a log-binned histogram (1.2% resolution). 0: no probes (the batched time per query is still
    reported as ``search_ms_per_query``)."""
    fit_bridge: bool = True
    """Keep teaching the bridge on the stream's anchor pairs (False: frozen bridge). Procrustes
    accumulates the pairs and refreshes every ``refresh_every``; a learned bridge takes one AdamW step
    per batch at its ``bridge.lr``, starting from the checkpoint's optimizer state."""
    bridge_checkpoint: str | None = None
    """A train.py checkpoint (loaded with weights_only=True) whose bridge starts the evaluation: any
    kind (Procrustes, learned linear / orthogonal / MLP), rebuilt from the checkpoint's own config
    (the ``bridge`` argument only configures a Procrustes bridge started from scratch)."""
    epsilon_source: str = "interval"
    """ε of the certificate: 'interval' (drift over the last refresh), 'reference', 'frozen' (0; only
    valid with fit_bridge=False) or 'given' (``epsilon_value``)."""
    epsilon_value: float | None = None
    """ε when ``epsilon_source='given'``."""
    rescore: bool = True
    """Re-score warm PQ candidates exactly from the originals (ζ = 0 on those hits)."""
    certificate_distances: str = "auto"
    """'vectors' (true/x̂ pair distances; one process only), 'cap' (||x_i - x_j|| <= 2), 'auto'."""
    seed: int = 0
    """Seed of the query sampling (identical on every rank)."""
    report_dir: str | None = "artifacts/eval"
    """Where rank 0 writes report.json and the PNG plots at the end (None: no files)."""

    def validate(self) -> None:
        n = "StreamEvalConfig"
        require(self.k >= 1, n, "k", self.k, "use k >= 1")
        require(self.fresh_queries >= 0 and self.old_queries >= 0, n, "fresh_queries/old_queries",
                (self.fresh_queries, self.old_queries), "use counts >= 0")
        require(self.window_batches >= 1, n, "window_batches", self.window_batches, "use >= 1")
        require(self.latency_probes >= 0, n, "latency_probes", self.latency_probes, "use a count >= 0, e.g. 8")
        require(isinstance(self.query_pool, int) and self.query_pool >= 1, n, "query_pool", self.query_pool,
                "use an int >= 1 (earlier queries kept, e.g. 65536)")
        require(self.epsilon_source in EPSILON_SOURCES, n, "epsilon_source", self.epsilon_source,
                f"use one of {EPSILON_SOURCES}")
        require(not (self.epsilon_source == "frozen" and self.fit_bridge), n, "epsilon_source",
                self.epsilon_source, "ε = 0 is only valid for a frozen bridge: set fit_bridge=False or use 'interval'")
        require(self.certificate_distances in ("auto", "vectors", "cap"), n, "certificate_distances",
                self.certificate_distances, "use 'auto', 'vectors' or 'cap'")


def load_checkpoint_safely(path: str, argument: str) -> dict:
    """``torch.load(path, weights_only=True)``: tensors and primitives only, never arbitrary objects.

    A missing file, a file that is not a checkpoint, or one that holds pickled objects (which
    weights_only refuses to build: they could run code) is an error naming ``argument`` and the file.
    """
    import os
    import pickle

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument}={path!r} does not exist; pass a checkpoint written by train.py "
                                "(e.g. artifacts/train/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        why = next((ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln or "WeightsUnpickler" in ln), "")
        raise ValueError(f"{argument}={path!r} holds objects other than tensors and primitives, refused by "
                         f"torch.load(weights_only=True) because loading them could run code ({why}); do not "
                         "load it with weights_only=False unless you trust its source; use a checkpoint written "
                         "by train.py") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{argument}={path!r} is not a readable torch checkpoint ({type(err).__name__}: {err}); "
                         "it may be truncated; use another checkpoint") from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{argument}={path!r} has no 'state_dict'; pass a Lightning checkpoint written by train.py")
    return ckpt


class StreamEvaluator(pl.LightningModule):
    """Runs the evaluation in ``test_step``; ``trainer.test(evaluator, datamodule)`` drives it.

    ``self.memory`` (TieredMemory, or ShardedMemory under DDP) is what the admission, migration and
    Safe@k callbacks find on the module. ``self.series`` holds the time series (rank 0 writes the
    report, see ``luma_pl.evaluation.report``).
    """

    def __init__(self, eval: StreamEvalConfig | None = None, bridge: ProcrustesConfig | None = None,
                 memory: MemoryConfig | None = None, admission: AdmissionConfig | None = None,
                 memory_dir: str | None = None) -> None:
        super().__init__()
        self.cfg = as_config(StreamEvalConfig, eval)
        self.bridge_cfg = as_config(ProcrustesConfig, bridge)
        self.memory_cfg = as_config(MemoryConfig, memory)
        self.admission_cfg = None if admission is None else as_config(AdmissionConfig, admission)
        self.memory_dir = memory_dir
        self.save_hyperparameters({"eval": self.cfg.to_dict(), "bridge": self.bridge_cfg.to_dict(),
                                   "memory": self.memory_cfg.to_dict(),
                                   "admission": None if self.admission_cfg is None else self.admission_cfg.to_dict()})
        self.bridge = StreamingProcrustes(self.bridge_cfg)  # replaced by the checkpoint's bridge in setup
        self.memory = None
        self.admission = None
        self.series: list[dict] = []

    # --- set-up ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        rank, world = rank_and_world()
        local = TieredMemory(self.memory_cfg, directory=None if self.memory_dir is None
                             else f"{self.memory_dir}/rank{rank}")
        self.memory = ShardedMemory(local) if world > 1 else local
        self.prototypes = None
        if self.admission_cfg is not None:
            self.admission = AdmissionPipeline(self.admission_cfg, dim=self.memory_cfg.dim)
            if self.admission_cfg.mode == "prototypes":
                # the memory holds the centroids; every rank keeps the same members (it replays the
                # same batches), so answers are the same on every rank
                self.prototypes = PrototypeIndex(self.admission, self.memory, directory=None if self.memory_dir is None
                                                 else f"{self.memory_dir}/rank{rank}/members")
        optimizer_state = None
        if self.cfg.bridge_checkpoint:
            arg = f"bridge_checkpoint={self.cfg.bridge_checkpoint!r}"
            ckpt = load_checkpoint_safely(self.cfg.bridge_checkpoint, "bridge_checkpoint")
            state = {k[len("bridge."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("bridge.")}
            if not state:
                raise ValueError(f"{arg} holds no 'bridge.*' state; pass a checkpoint written by train.py")
            self.bridge = bridge_from_state(state, arg)
            opt = ckpt.get("optimizer_states")
            if isinstance(opt, list) and len(opt) == 1 and isinstance(opt[0], dict):
                optimizer_state = opt[0]  # a learned bridge keeps learning with its own Adam moments
        self.stream_bridge = StreamBridge(self.bridge, learn=self.cfg.fit_bridge, optimizer_state=optimizer_state)
        self.stream_bridge.set_reference()  # the stored vectors are compared against this bridge
        self._rng = np.random.default_rng(self.cfg.seed)
        self._seen = SeenIds()  # event ids ingested so far (replicated on every rank)
        self._pool = QueryReservoir(self.cfg.query_pool, self.stream_bridge.d_s)  # earlier events' queries
        self._latency = LatencyHistogram()  # the run's per-query latencies (all ranks, all windows)
        self._reset_window()
        self._t0 = time.perf_counter()
        self._events = 0
        self._batches = 0

    def _reset_window(self) -> None:
        self._sums = np.zeros(len(SUMS), np.float64)
        self._lat: list[float] = []  # batched search time / queries, per batch
        self._probe_lat = LatencyHistogram()  # this window's single-query latencies, this rank
        self._ingest_s = 0.0

    @property
    def local_memory(self) -> TieredMemory:
        return self.memory.shard

    def stream_state(self) -> dict[str, int]:
        """What the replay keeps about the events so far: ``seen_ids`` (distinct event ids ingested),
        ``query_rows`` (rows of queries offered to the pool), ``query_pool`` (rows it holds now)."""
        return {"seen_ids": len(self._seen), "query_rows": int(self._pool.seen), "query_pool": len(self._pool)}

    # --- one stream step ------------------------------------------------------------------------
    @torch.no_grad()
    def test_step(self, batch: dict, batch_idx: int) -> None:
        rank, world = rank_and_world()
        cfg = self.cfg
        B = len(batch["key"])
        ids = batch_ids(batch)
        emb, has = batch.get("emb", {}), batch.get("has", {})
        item_ok = has[cfg.item_space].numpy().copy() if B else np.zeros(0, bool)
        # a key replayed twice (a stream that repeats an event, or two shards that overlap) is
        # skipped and counted, not inserted twice. Every rank sees every batch, so the check is
        # replicated (a set of the ids seen) and every rank's admission state stays identical.
        if rank == 0:  # the reader's counted skips (replicated replay: every rank sees the same batch)
            self._sums[SUMS.index("replay_skipped")] += int(batch.get("skipped", 0))
            self._sums[SUMS.index("replay_events_skipped")] += int(batch.get("events_skipped", 0))
        if B:
            fresh = self._seen.first_arrivals(ids, item_ok)
            if rank == 0:  # replicated counts are counted once (the window sums are all-reduced)
                self._sums[SUMS.index("duplicates")] += int((item_ok & ~fresh).sum())
            item_ok = fresh

        # 1. ingest (timed): every rank sees the same batch; each keeps the ids it owns
        t = time.perf_counter()
        if B and item_ok.any():
            x = emb[cfg.item_space].numpy()[item_ok]
            if self.prototypes is not None:
                self.prototypes.ingest(ids[item_ok], x)
            elif self.admission is not None:
                self.admission.ingest_items(self.memory, ids[item_ok], x)
            else:
                self.memory.insert(ids[item_ok], x)
        self._ingest_s += time.perf_counter() - t
        if rank == 0:
            self._sums[SUMS.index("ingested")] += int(item_ok.sum())

        # 2. bridge: this rank's share of the anchor pairs; learning is a collective (Procrustes
        # all-reduces its increments, a learned bridge its gradients)
        if cfg.fit_bridge:
            if B:
                pair = has[cfg.source_space] & has[cfg.item_space]
                pair[torch.arange(B) % world != rank] = False
                s, c = emb[cfg.source_space][pair], emb[cfg.item_space][pair]
            else:
                s = torch.zeros(0, self.stream_bridge.d_s)
                c = torch.zeros(0, self.stream_bridge.d_c)
            self.stream_bridge.learn(s, c)

        # 3. queries: the same global selection on every rank, rows split by rank
        a, target, fresh = self._select_queries(batch, ids, B)
        mine = np.arange(len(target)) % world == rank
        a, target, fresh = a[mine], target[mine], fresh[mine]
        if self.stream_bridge.ready():  # a Procrustes bridge that never refreshed maps nothing yet
            self._ask(a, target, fresh)
        elif world > 1:
            self._ask(a[:0], target[:0], fresh[:0])  # the sharded search is a collective
        self._batches += 1
        self._events += B
        if self._batches % cfg.window_batches == 0:
            self._close_window()

    def _select_queries(self, batch: dict, ids: np.ndarray, B: int):
        cfg = self.cfg
        d_s = self.stream_bridge.d_s
        q_ok = batch["has"][cfg.query_space].numpy() if B else np.zeros(0, bool)
        qa = batch["emb"][cfg.query_space].numpy() if B else np.zeros((0, d_s), np.float32)
        fresh_rows = np.flatnonzero(q_ok)
        fresh_rows = self._rng.permutation(fresh_rows)[: cfg.fresh_queries]
        a = [qa[fresh_rows]]
        target = [ids[fresh_rows]]
        fresh = [np.ones(len(fresh_rows), bool)]
        if cfg.old_queries and len(self._pool):
            old_a, old_id = self._pool.draw(cfg.old_queries, self._rng)
            a.append(old_a)
            target.append(old_id)
            fresh.append(np.zeros(len(old_id), bool))
        # this batch's events become "earlier events" from the next step
        self._pool.offer(qa[q_ok], ids[q_ok], self._rng)
        return (np.concatenate(a).astype(np.float32), np.concatenate(target), np.concatenate(fresh))

    def _ask(self, a: np.ndarray, target: np.ndarray, fresh: np.ndarray) -> None:
        cfg = self.cfg
        k = cfg.k
        q, a_norm, u_norm = S.bridge_queries(self.bridge, torch.from_numpy(a))  # (Q, d_c)
        t = time.perf_counter()
        # k + 1 candidates: the certificate compares the top-k against the next one
        res = self._search(q.numpy(), k + 1)
        if len(a):
            self._lat.append((time.perf_counter() - t) / len(a))
        self._probe_latency(q.numpy(), k + 1)
        if not len(a):
            return
        # metrics through the functional core: the k returned ranks as descending scores, plus one
        # column for the relevant item when it is not in the top-k (so the ideal DCG counts it)
        rel = torch.from_numpy(res.ids[:, :k] == target[:, None])  # (Q, k): one relevant item per query
        found = rel.any(1)
        scores = torch.cat([torch.arange(k, 0, -1, dtype=torch.float64).expand(len(a), k),
                            torch.zeros(len(a), 1, dtype=torch.float64)], dim=1)  # (Q, k + 1)
        rel_full = torch.cat([rel, ~found[:, None]], dim=1)
        per = {m: MF.per_query(m, scores, rel_full, k)[0] for m in ("hit_rate", "recall", "mrr", "ndcg")}
        hit = per["hit_rate"]
        choice = S.choose_epsilon(self.bridge, cfg.epsilon_source, cfg.epsilon_value)
        eps_q = S.query_epsilon(choice, a_norm, u_norm)
        rank, world = rank_and_world()
        mode = cfg.certificate_distances
        if mode == "auto" or self.prototypes is not None:
            mode = "vectors" if world == 1 and self.prototypes is None else "cap"
        cert = S.certify_search(res, k, eps_q, memory=self.local_memory if mode == "vectors" else None,
                                rescored=cfg.rescore, distances=mode)
        sums = self._sums
        for name, v in (("queries", len(a)), ("hit", hit.sum()), ("recall", per["recall"].sum()),
                        ("mrr", per["mrr"].sum()), ("ndcg", per["ndcg"].sum()), ("safe1", cert.safe_at_1.sum()),
                        ("safek", cert.safe_at_k.sum()), ("crude1", cert.crude_safe_at_1.sum()), ("eps_q", eps_q.clamp(max=1e6).sum()),
                        ("zeta1", torch.as_tensor(cert.zeta_1).sum()),
                        ("margin_top2", torch.as_tensor(cert.margin_top2).nan_to_num(0.0).sum()),
                        ("fresh_queries", fresh.sum()), ("fresh_queries_hit", hit[torch.from_numpy(fresh)].sum()),
                        ("old_queries", (~fresh).sum()), ("old_queries_hit", hit[torch.from_numpy(~fresh)].sum())):
            sums[SUMS.index(name)] += float(v)
        self._eps_used = (choice.value, choice.source)

    def _probe_latency(self, q: np.ndarray, k: int) -> None:
        """Search ``latency_probes`` of this batch's queries one at a time, timing each. Under DDP the
        sharded search is a collective, so every rank makes the same number of calls (a rank short
        of queries searches a zero row, untimed); only a ready bridge asks anything (replicated)."""
        if not self.cfg.latency_probes or not self.stream_bridge.ready():
            return
        world = rank_and_world()[1]
        n = self.cfg.latency_probes if world > 1 else min(self.cfg.latency_probes, len(q))
        for i in range(n):
            row = q[i % len(q)][None] if len(q) else np.zeros((1, q.shape[1]), np.float32)
            t = time.perf_counter()
            self._search(row, k)
            if len(q):
                self._probe_lat.add(time.perf_counter() - t)

    def _search(self, q: np.ndarray, k: int) -> SearchResult:
        if self.prototypes is None:
            return self.memory.search(q, k, rescore=self.cfg.rescore, record_hits=True)
        # prototypes mode: exact scores of the probed clusters' members (ζ = 0). As with IVF's
        # unprobed lists (docs/design.md section 6), members of unprobed clusters are items the
        # approximate search missed: outside the certificate, measured by the recall numbers.
        ids, scores = self.prototypes.search(q, k)
        valid = ids >= 0
        return SearchResult(ids, scores, np.where(valid, HOT, -1).astype(np.int8),
                            np.zeros(ids.shape, np.float32), 0.0)

    def _close_window(self) -> None:
        sums = torch.from_numpy(np.concatenate([self._sums, self._probe_lat.counts.astype(np.float64)]))
        lat = np.asarray(self._lat, np.float64)
        if initialised():
            dist.all_reduce(sums)  # counts < 2**53: exact in float64
        probe_counts = sums[len(SUMS):].numpy().astype(np.int64)
        self._latency.merge(probe_counts)
        s = dict(zip(SUMS, sums[: len(SUMS)].tolist(), strict=True))
        nq = max(s["queries"], 1.0)
        mem = self.local_memory
        stats = mem.stats()
        by_tier = mem.bytes_by_tier()
        point = {"batch": self._batches, "events": self._events, "queries": s["queries"],
                 "hit_rate@k": s["hit"] / nq, "recall@k": s["recall"] / nq, "mrr@k": s["mrr"] / nq,
                 "ndcg@k": s["ndcg"] / nq, "safe@1": s["safe1"] / nq, "safe@k": s["safek"] / nq,
                 "crude_safe@1": s["crude1"] / nq, "epsilon": float(getattr(self, "_eps_used", (math.inf,))[0]),
                 "epsilon_source": getattr(self, "_eps_used", (0, self.cfg.epsilon_source))[1],
                 "mean_eps_q": s["eps_q"] / nq, "mean_zeta1": s["zeta1"] / nq, "zeta_max": float(stats["zeta_max"]),
                 "fresh_hit_rate": s["fresh_queries_hit"] / max(s["fresh_queries"], 1.0),
                 "old_hit_rate": s["old_queries_hit"] / max(s["old_queries"], 1.0),
                 "latency_p50_ms": quantile(probe_counts, 0.5) * 1e3, "latency_p99_ms": quantile(probe_counts, 0.99) * 1e3,
                 "latency_samples": float(probe_counts.sum()),
                 "search_ms_per_query": float(np.median(lat) * 1e3) if len(lat) else math.nan,
                 "ingest_per_s": s["ingested"] / max(self._ingest_s, 1e-9),
                 "hot_items": stats["hot"], "warm_items": stats["warm"] + stats["buffer"], "evicted": stats["evicted"],
                 "hot_bytes": by_tier["hot"], "warm_bytes": by_tier["warm"],
                 "dropped": float(self.admission.prefilter.dropped) if self.admission is not None else 0.0,
                 "duplicates_skipped": s["duplicates"],
                 "replay_skipped": s["replay_skipped"], "replay_events_skipped": s["replay_events_skipped"],
                 "prototype_members": float(self.prototypes.held()) if self.prototypes is not None else 0.0,
                 "rss_mb": resident_set_bytes() / 2**20, "query_pool": float(len(self._pool)),
                 "wall_s": time.perf_counter() - self._t0}
        self.series.append(point)
        # straight to the loggers, stepped by replayed batches: a window can also close in
        # on_test_epoch_end (a partial last window), where self.log(on_step=True) is not allowed
        if self.trainer.is_global_zero:
            metrics = {f"eval/{k}": float(v) for k, v in point.items()
                       if isinstance(v, (int, float)) and math.isfinite(v)}
            for logger in self.trainer.loggers:
                logger.log_metrics(metrics, step=self._batches)
        self._reset_window()

    def on_test_epoch_end(self) -> None:
        if self._batches % self.cfg.window_batches:
            self._close_window()
        self.stream_bridge.finish()  # a learning Procrustes bridge refreshes on its last pairs

    def on_test_end(self) -> None:
        # written here, not by the caller: under a spawning launcher only the workers hold the series
        from luma_pl.evaluation.report import summarise, write_report

        self.summary = summarise(self.series, self.cfg.k, latency=self._latency)
        if self.cfg.report_dir is None or not self.trainer.is_global_zero:
            return
        self.report_paths = write_report(self.series, self.summary, self.cfg.report_dir, extra={
            "config": {"eval": self.cfg.to_dict(), "bridge_kind": self.stream_bridge.kind,
                       "bridge": self.bridge.config.to_dict(),
                       "memory": self.memory_cfg.to_dict(), "world_size": self.trainer.world_size}})
        for logger in self.trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                plots = {n: p for n, p in self.report_paths.items() if n != "report"}
                logger.experiment.summary.update({f"eval_summary/{k}": v for k, v in self.summary.items()
                                                  if isinstance(v, (int, float))})
                logger.log_image("eval/plots", [str(p) for p in plots.values()], caption=list(plots))

