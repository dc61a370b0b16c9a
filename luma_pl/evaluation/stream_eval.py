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
   bridged into canonical space; the relevant item is the event's own item. **Labelled query
   events** (``batch["relevant"]``: the event carries the ids of its relevant items, possibly none;
   see ``data_modules/shard_format.py``) are queries, not items: each is asked once, in stream
   order after this batch's ingest, scored against its own labels (several relevant items, or
   none: counted, not scored), and is never ingested, learned from or sampled;
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

from luma_pl.admission.pipeline import AdmissionConfig
from luma_pl.bridge.procrustes import ProcrustesConfig, StreamingProcrustes
from luma_pl.configuration import StrictConfig, as_config, require
from luma_pl.encoders import EncoderConfig
from luma_pl.encoders.media_batch import MEDIA_MODALITY, encode_media
from luma_pl.memory import MemoryConfig, TieredMemory
from luma_pl.metrics import functional as MF
from luma_pl.ranks import initialised, rank_and_world
from luma_pl.stream.bridge import StreamBridge, bridge_from_state
from luma_pl.stream.ids import batch_ids
from luma_pl.stream.pool import QueryReservoir
from luma_pl.stream.runtime import StreamRuntime
from luma_pl.telemetry.functional import EPSILON_SOURCES
from luma_pl.telemetry.latency import LatencyHistogram, quantile
from luma_pl.telemetry.log_histogram import BINS, LogHistogram
from luma_pl.telemetry.resources import resident_set_bytes
from luma_pl.tracking.loggers import recorded_wandb_run

# window sums, all-reduced across ranks: one float64 vector in this order
SUMS = ("queries", "hit", "recall", "mrr", "ndcg", "safe1", "safek", "crude1",
        "eps_q", "zeta1", "margin_top2", "ingested", "fresh_queries_hit", "fresh_queries", "old_queries_hit",
        "old_queries", "duplicates", "replay_skipped", "replay_events_skipped",
        "labelled_asked", "labelled_scored", "labelled_hit", "labelled_recall", "labelled_mrr", "labelled_ndcg",
        "labelled_safe1", "labelled_safek", "labelled_unanswered", "labelled_relevant", "labelled_relevant_unseen",
        "preq_n", "preq_hit1", "preq_hitk", "preq_rr", "preq_cos",
        "csls_queries", "csls_hit", "csls_recall", "csls_mrr", "csls_ndcg")
"""Sampled queries (``queries`` ... ``old_queries``) and labelled query events (``labelled_*``) are
summed apart: ``labelled_asked`` were answered, ``labelled_scored`` of them list a relevant item (the
rates' denominator), ``labelled_unanswered`` came before the bridge mapped anything or without a
query vector, ``labelled_relevant_unseen`` of the ``labelled_relevant`` ids listed had not arrived
when the query was asked (a stream that asks about its future). ``preq_*``: prequential sums of the
anchor pairs (``luma_pl.bridge.prequential``: each pair scored by the bridge before it learns it)."""

SAMPLED, LABELLED = 0, 1
RADII = ("radius@1", "radius@k")
"""Certified radii of sampled answers, counted per window in log histograms (all-reduced with SUMS)."""
RADIUS_QUANTILES = (0.1, 0.5, 0.9)


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
    media_keys: dict[str, str] = dataclasses.field(default_factory=dict)
    """Space -> media extension encoded on the fly when a batch has no precomputed ``emb`` for that
    space (raw WebDataset replay: e.g. {"clip": "jpg", "clip_text": "txt"}); needs an entry in the
    evaluator's ``encoders`` for that space."""
    report_dir: str | None = "artifacts/eval"
    """Where rank 0 writes report.json and the PNG plots at the end (None: no files)."""
    hubness: str = "none"
    """'csls': also re-rank every sampled query's ``csls_pool`` cosine candidates by CSLS
    (``luma_pl.bridge.hubness``: 2 cos(q, x) - r(x), r from the ``csls_k`` nearest of the last
    ``csls_bank`` bridged anchors, re-bridged with the current bridge at each batch) and report
    ``csls_recall@k`` ... beside the cosine metrics. Safe@k does **not** apply to the re-ranked
    list: an item outside the cosine pool is bounded in cosine but not in r, so no CSLS margin is
    certified; the Safe@k figures stay those of the cosine ranking. One process only."""
    csls_k: int = 10
    """Neighbours of an item among the bridged anchors whose mean cosine is its penalty r(x)."""
    csls_bank: int = 1024
    """Source anchors kept (the last ones of the stream) for the penalty."""
    csls_pool: int = 50
    """Cosine candidates per query re-ranked by CSLS (>= k + 1)."""

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
        require(self.hubness in ("none", "csls"), n, "hubness", self.hubness, "use 'none' or 'csls'")
        require(isinstance(self.csls_k, int) and self.csls_k >= 1 and isinstance(self.csls_bank, int)
                and self.csls_bank >= self.csls_k, n, "csls_k/csls_bank", (self.csls_k, self.csls_bank),
                "use 1 <= csls_k <= csls_bank, e.g. 10 and 1024")
        require(self.hubness == "none" or isinstance(self.csls_pool, int) and self.csls_pool >= self.k + 1, n,
                "csls_pool", self.csls_pool,
                f"use at least k + 1 = {self.k + 1} candidates to re-rank")
        require(self.certificate_distances in ("auto", "vectors", "cap"), n, "certificate_distances",
                self.certificate_distances, "use 'auto', 'vectors' or 'cap'")
        require(all(ext in MEDIA_MODALITY for ext in self.media_keys.values()), n, "media_keys", self.media_keys,
                f"extensions must be in {sorted(MEDIA_MODALITY)}")


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


def labelled_rows(batch: dict, B: int) -> np.ndarray:
    """(B,) bool: which rows of a replay batch are labelled query events (``batch["relevant"][i]`` is
    not None); a batch without the field (built by hand, or by an older reader) has none."""
    rel = batch.get("relevant")
    if rel is None:
        return np.zeros(B, bool)
    if len(rel) != B:
        raise ValueError(f"batch['relevant'] has {len(rel)} entries for {B} events; the replay writes one per event "
                         "(None, or a LongTensor of the relevant items' ids)")
    return np.array([r is not None for r in rel], bool)


def labelled_point(s: dict) -> dict:
    """A window's labelled-query figures from its summed ``labelled_*`` counts (rates are NaN in a
    window that scored none, so they drop out of the query-weighted means)."""
    scored, asked = s["labelled_scored"], s["labelled_asked"]
    rate = lambda key, n: s[key] / n if n else math.nan  # noqa: E731
    return {"labelled_queries": asked, "labelled_scored": scored, "labelled_unanswered": s["labelled_unanswered"],
            "labelled_hit_rate@k": rate("labelled_hit", scored), "labelled_recall@k": rate("labelled_recall", scored),
            "labelled_mrr@k": rate("labelled_mrr", scored), "labelled_ndcg@k": rate("labelled_ndcg", scored),
            "labelled_safe@1": rate("labelled_safe1", asked), "labelled_safe@k": rate("labelled_safek", asked),
            "labelled_relevant": s["labelled_relevant"], "labelled_relevant_unseen": s["labelled_relevant_unseen"]}


def extra_point(s: dict) -> dict:
    """A window's CSLS (``hubness``) and prequential figures from its sums, as ``labelled_point``:
    NaN in a window with none, so they drop out of the weighted means."""
    rate = lambda key, n: s[key] / s[n] if s[n] else math.nan  # noqa: E731
    return {"csls_queries": s["csls_queries"], "csls_hit_rate@k": rate("csls_hit", "csls_queries"),
            "csls_recall@k": rate("csls_recall", "csls_queries"), "csls_mrr@k": rate("csls_mrr", "csls_queries"),
            "csls_ndcg@k": rate("csls_ndcg", "csls_queries"), "preq_pairs": s["preq_n"],
            "preq_recall@1": rate("preq_hit1", "preq_n"), "preq_recall@k": rate("preq_hitk", "preq_n"),
            "preq_mrr@k": rate("preq_rr", "preq_n"), "preq_cosine": rate("preq_cos", "preq_n")}


class StreamEvaluator(pl.LightningModule):
    """Runs the evaluation in ``test_step``; ``trainer.test(evaluator, datamodule)`` drives it.

    ``self.memory`` (TieredMemory, or ShardedMemory under DDP) is what the admission, migration and
    Safe@k callbacks find on the module. ``self.series`` holds the time series (rank 0 writes the
    report, see ``luma_pl.evaluation.report``).
    """

    def __init__(self, eval: StreamEvalConfig | None = None, bridge: ProcrustesConfig | None = None,
                 memory: MemoryConfig | None = None, admission: AdmissionConfig | None = None,
                 memory_dir: str | None = None, encoders: dict[str, EncoderConfig] | None = None) -> None:
        super().__init__()
        self.cfg = as_config(StreamEvalConfig, eval)
        self.encoder_cfgs = {space: as_config(EncoderConfig, c) for space, c in (encoders or {}).items()}
        missing = sorted(set(self.cfg.media_keys) - set(self.encoder_cfgs))
        if missing:
            raise ValueError(f"eval.media_keys names space(s) {missing} but encoders has {sorted(self.encoder_cfgs)}; "
                             "pass an EncoderConfig for each (model.encoders.<space>)")
        self._encoders: dict = {}  # built in setup; a plain dict: frozen weights stay out of checkpoints
        self.bridge_cfg = as_config(ProcrustesConfig, bridge)
        self.memory_cfg = as_config(MemoryConfig, memory)
        self.admission_cfg = None if admission is None else as_config(AdmissionConfig, admission)
        self.memory_dir = memory_dir
        self.save_hyperparameters({"eval": self.cfg.to_dict(), "bridge": self.bridge_cfg.to_dict(),
                                   "memory": self.memory_cfg.to_dict(),
                                   "admission": None if self.admission_cfg is None else self.admission_cfg.to_dict(),
                                   "encoders": {sp: c.to_dict() for sp, c in self.encoder_cfgs.items()}})
        self.bridge = StreamingProcrustes(self.bridge_cfg)  # replaced by the checkpoint's bridge in runtime()
        self.stream = None
        self.checkpoint_wandb_run: str | None = None  # the W&B run of the train.py run behind bridge_checkpoint
        self.series: list[dict] = []

    # --- set-up ---------------------------------------------------------------------------------
    def runtime(self):
        """The evaluator's ``StreamRuntime`` (``luma_pl.stream.runtime``), built on first call (the
        callbacks' ``setup`` runs before this module's): the bridge (from ``bridge_checkpoint``, any
        kind, or a Procrustes bridge from scratch), the memory (sharded under DDP), and the
        admission of ``model.admission`` (or none: a ``HeavyHitterAdmission`` callback may set it)."""
        if self.stream is not None:
            return self.stream
        rank, _ = rank_and_world()
        optimizer_state = None
        if self.cfg.bridge_checkpoint:
            arg = f"bridge_checkpoint={self.cfg.bridge_checkpoint!r}"
            ckpt = load_checkpoint_safely(self.cfg.bridge_checkpoint, "bridge_checkpoint")
            self.checkpoint_wandb_run = recorded_wandb_run(ckpt)  # the train.py run it came from (lineage)
            state = {k[len("bridge."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("bridge.")}
            if not state:
                raise ValueError(f"{arg} holds no 'bridge.*' state; pass a checkpoint written by train.py")
            self.bridge = bridge_from_state(state, arg)
            opt = ckpt.get("optimizer_states")
            if isinstance(opt, list) and len(opt) == 1 and isinstance(opt[0], dict):
                optimizer_state = opt[0]  # a learned bridge keeps learning with its own Adam moments
        bridge = StreamBridge(self.bridge, learn=self.cfg.fit_bridge, optimizer_state=optimizer_state)
        bridge.set_reference()  # the stored vectors are compared against this bridge
        # every rank replays the whole stream (replicated): ingest needs no all-gather
        self.stream = StreamRuntime.build(self.memory_cfg, self.memory_dir, bridge, replicated=True)
        if self.admission_cfg is not None:
            self.stream.use_admission(self.admission_cfg, prototype_dir=None if self.memory_dir is None
                                      else f"{self.memory_dir}/rank{rank}/members")
        return self.stream

    @property
    def stream_bridge(self) -> StreamBridge:
        return self.runtime().bridge

    @property
    def memory(self):
        """The runtime's memory (TieredMemory, or ShardedMemory under DDP)."""
        return None if self.stream is None else self.stream.memory

    @property
    def admission(self):
        return None if self.stream is None else self.stream.admission

    @property
    def prototypes(self):
        return None if self.stream is None else self.stream.prototypes

    records_hits = True
    """The replay's queries record hits (``TierMigration`` needs them)."""

    def setup(self, stage: str) -> None:
        self.runtime()
        if self.encoder_cfgs and not self._encoders:
            from luma_pl.encoders import build_encoder

            self._encoders = {space: build_encoder(c) for space, c in self.encoder_cfgs.items()}
        self._rng = np.random.default_rng(self.cfg.seed)
        self._pool = QueryReservoir(self.cfg.query_pool, self.stream_bridge.d_s)  # earlier events' queries
        self._latency = LatencyHistogram()  # the run's per-query latencies (all ranks, all windows)
        # the run's certified radii of sampled answers (functional.Certificate.radius_at_1 / _at_k)
        self.radii = {"radius@1": LogHistogram(), "radius@k": LogHistogram()}
        self._reset_window()
        self._t0 = time.perf_counter()
        self._events = 0
        self._batches = 0

    def _reset_window(self) -> None:
        self._sums = np.zeros(len(SUMS), np.float64)
        self._lat: list[float] = []  # batched search time / queries, per batch
        self._probe_lat = LatencyHistogram()  # this window's single-query latencies, this rank
        self._radius = {name: LogHistogram() for name in RADII}  # this window's radii, this rank
        self._ingest_s = 0.0

    @property
    def local_memory(self) -> TieredMemory:
        return self.memory.shard

    def stream_state(self) -> dict[str, int]:
        """What the replay keeps about the events so far: ``seen_ids`` (distinct event ids ingested),
        ``query_rows`` (rows of queries offered to the pool), ``query_pool`` (rows it holds now)."""
        return {"seen_ids": len(self.stream.seen), "query_rows": int(self._pool.seen), "query_pool": len(self._pool)}

    # --- one stream step ------------------------------------------------------------------------
    def with_encoded_media(self, batch: dict) -> dict:
        """The batch with ``emb`` / ``has`` of every ``media_keys`` space it lacks, encoded from its
        raw media (``luma_pl.encoders.media_batch.encode_media``, the modules' own step)."""
        todo = {sp: ext for sp, ext in self.cfg.media_keys.items() if sp not in batch.get("emb", {})}
        if not todo:
            return batch
        B = len(batch["key"])
        emb, has = dict(batch.get("emb", {})), dict(batch.get("has", {}))
        for space, ext in todo.items():
            enc = self._encoders[space]
            emb[space], has[space] = encode_media(batch.get("media", {}).get(ext, [None] * B), ext, enc, enc.dim)
        return {**batch, "emb": emb, "has": has}

    @torch.no_grad()
    def test_step(self, batch: dict, batch_idx: int) -> None:
        rank, world = rank_and_world()
        cfg = self.cfg
        batch = self.with_encoded_media(batch)
        B = len(batch["key"])
        ids = batch_ids(batch)
        emb, has = batch.get("emb", {}), batch.get("has", {})
        labelled = labelled_rows(batch, B)
        item_ok = has[cfg.item_space].numpy().astype(bool) & ~labelled if B else np.zeros(0, bool)
        if rank == 0:  # the reader's counted skips (replicated replay: every rank sees the same batch)
            self._sums[SUMS.index("replay_skipped")] += int(batch.get("skipped", 0))
            self._sums[SUMS.index("replay_events_skipped")] += int(batch.get("events_skipped", 0))

        # 1. ingest (timed) through the runtime: the replay rule (a key replayed twice, or two shards
        # that overlap, is skipped and counted), admission, each rank keeping the ids it owns
        t = time.perf_counter()
        x = emb[cfg.item_space].numpy()[item_ok] if B else np.zeros((0, self.memory.dim), np.float32)
        done = self.stream.ingest(ids[item_ok], x)
        self._ingest_s += time.perf_counter() - t
        if rank == 0:  # replicated counts are counted once (the window sums are all-reduced)
            self._sums[SUMS.index("duplicates")] += done.replayed
            self._sums[SUMS.index("ingested")] += len(done.ids)

        # 2. bridge: this rank's share of the anchor pairs; learning is a collective (Procrustes
        # all-reduces its increments, a learned bridge its gradients)
        if B:
            pair = has[cfg.source_space] & has[cfg.item_space] & ~torch.from_numpy(labelled)
            pair[torch.arange(B) % world != rank] = False
            s, c = emb[cfg.source_space][pair], emb[cfg.item_space][pair]
        else:
            s = torch.zeros(0, self.stream_bridge.d_s)
            c = torch.zeros(0, self.stream_bridge.d_c)
        self._score_prequential(s, c)  # test, then train: the pairs under the bridge before it learns them
        if cfg.hubness == "csls":
            self._csls_push(s)
        if cfg.fit_bridge:
            self.stream.learn(s, c)

        # 3. queries: the same global selection on every rank, rows split by rank
        a, relevant, kind, fresh = self._select_queries(batch, ids, B, labelled)
        ready = self.stream.ready()  # a Procrustes bridge that never refreshed maps nothing yet
        if rank == 0:
            asked = kind == LABELLED
            self._sums[SUMS.index("labelled_unanswered")] += int(labelled.sum()) - (int(asked.sum()) if ready else 0)
        mine = np.flatnonzero(np.arange(len(kind)) % world == rank)
        if ready:
            self._ask(a[mine], [relevant[i] for i in mine], kind[mine], fresh[mine])
        self._batches += 1
        self._events += B
        if self._batches % cfg.window_batches == 0:
            self._close_window()

    def _select_queries(self, batch: dict, ids: np.ndarray, B: int, labelled: np.ndarray):
        """This batch's queries, the same on every rank: ``(a (Q, d_s) float32, relevant (Q arrays of
        relevant ids), kind (Q,) SAMPLED/LABELLED, fresh (Q,) bool)``. Sampled queries are fresh rows
        of this batch and draws from the reservoir of earlier events (relevant: the event's own id);
        labelled query events come last with their own labels and never enter the reservoir."""
        cfg = self.cfg
        d_s = self.stream_bridge.d_s
        q_has = batch["has"][cfg.query_space].numpy().astype(bool) if B else np.zeros(0, bool)
        qa = batch["emb"][cfg.query_space].numpy() if B else np.zeros((0, d_s), np.float32)
        q_ok = q_has & ~labelled
        fresh_rows = np.flatnonzero(q_ok)
        fresh_rows = self._rng.permutation(fresh_rows)[: cfg.fresh_queries]
        a, target, fresh = [qa[fresh_rows]], [ids[fresh_rows]], [np.ones(len(fresh_rows), bool)]
        if cfg.old_queries and len(self._pool):
            old_a, old_id = self._pool.draw(cfg.old_queries, self._rng)
            a.append(old_a)
            target.append(old_id)
            fresh.append(np.zeros(len(old_id), bool))
        # this batch's events become "earlier events" from the next step
        self._pool.offer(qa[q_ok], ids[q_ok], self._rng)
        lab_rows = np.flatnonzero(labelled & q_has)
        a.append(qa[lab_rows])
        target = np.concatenate(target)
        relevant = [t[None] for t in target] + [batch["relevant"][i].numpy() for i in lab_rows]
        kind = np.concatenate([np.full(len(target), SAMPLED, np.int8), np.full(len(lab_rows), LABELLED, np.int8)])
        fresh = np.concatenate([*fresh, np.zeros(len(lab_rows), bool)])
        return np.concatenate(a).astype(np.float32), relevant, kind, fresh

    def _ask(self, a: np.ndarray, relevant: list, kind: np.ndarray, fresh: np.ndarray) -> None:
        """Ask this rank's queries (a collective under DDP: every rank calls it, maybe with 0 rows)
        and add their metrics (``MF.per_query_from_ids``: binary relevance over the ids each query
        lists) and certificates to the window sums, sampled and labelled apart."""
        cfg = self.cfg
        k = cfg.k
        pool = cfg.csls_pool if cfg.hubness == "csls" else None
        ans = self.stream.query(torch.from_numpy(a), k, candidates=pool, rescore=cfg.rescore, record_hits=True,
                                epsilon_source=cfg.epsilon_source, epsilon_value=cfg.epsilon_value,
                                distances=cfg.certificate_distances)
        if len(a):
            self._lat.append(ans.search_seconds / len(a))
        self._probe_latency(ans.queries.numpy(), k + 1)
        self._eps_used = (ans.epsilon.value, ans.epsilon.source)
        if not len(a):
            return
        res, cert, eps_q = ans.result, ans.certificate, ans.epsilon_q
        per = MF.per_query_from_ids(res.ids[:, :k], relevant, k)
        hit = per["hit_rate"]
        sampled = torch.from_numpy(kind == SAMPLED)
        fresh_t = torch.from_numpy(fresh)
        sums = self._sums
        self._radius["radius@1"].add(cert.radius_at_1[sampled].numpy())
        self._radius["radius@k"].add(cert.radius_at_k[sampled].numpy())
        if cfg.hubness == "csls":
            reranked = self._csls_rerank(ans.queries.numpy(), res.ids)
            if reranked is not None:
                per_c = MF.per_query_from_ids(reranked, relevant, k)
                for name, key in (("csls_hit", "hit_rate"), ("csls_recall", "recall"), ("csls_mrr", "mrr"),
                                  ("csls_ndcg", "ndcg")):
                    sums[SUMS.index(name)] += float(per_c[key][sampled].sum())
                sums[SUMS.index("csls_queries")] += float(sampled.sum())
        for name, v in (("queries", sampled.sum()), ("hit", hit[sampled].sum()), ("recall", per["recall"][sampled].sum()),
                        ("mrr", per["mrr"][sampled].sum()), ("ndcg", per["ndcg"][sampled].sum()),
                        ("safe1", cert.safe_at_1[sampled].sum()), ("safek", cert.safe_at_k[sampled].sum()),
                        ("crude1", cert.crude_safe_at_1[sampled].sum()), ("eps_q", eps_q[sampled].clamp(max=1e6).sum()),
                        ("zeta1", torch.as_tensor(cert.zeta_1)[sampled].sum()),
                        ("margin_top2", torch.as_tensor(cert.margin_top2)[sampled].nan_to_num(0.0).sum()),
                        ("fresh_queries", fresh_t.sum()), ("fresh_queries_hit", hit[fresh_t].sum()),
                        ("old_queries", (sampled & ~fresh_t).sum()), ("old_queries_hit", hit[sampled & ~fresh_t].sum())):
            sums[SUMS.index(name)] += float(v)
        lab = np.flatnonzero(kind == LABELLED)
        if not len(lab):
            return
        n_rel = np.array([len(np.unique(relevant[i])) for i in lab])
        unseen = sum(int((~self.stream.seen.contains(np.unique(relevant[i]))).sum()) for i in lab)
        scored = torch.from_numpy(lab[n_rel > 0])
        lab_t = torch.from_numpy(lab)
        for name, v in (("labelled_asked", len(lab)), ("labelled_scored", len(scored)),
                        ("labelled_hit", hit[scored].sum()), ("labelled_recall", per["recall"][scored].sum()),
                        ("labelled_mrr", per["mrr"][scored].sum()), ("labelled_ndcg", per["ndcg"][scored].sum()),
                        ("labelled_safe1", cert.safe_at_1[lab_t].sum()), ("labelled_safek", cert.safe_at_k[lab_t].sum()),
                        ("labelled_relevant", n_rel.sum()), ("labelled_relevant_unseen", unseen)):
            sums[SUMS.index(name)] += float(v)

    def _probe_latency(self, q: np.ndarray, k: int) -> None:
        """Search ``latency_probes`` of this batch's queries one at a time, timing each. Under DDP the
        sharded search is a collective, so every rank makes the same number of calls (a rank short
        of queries searches a zero row, untimed); only a ready bridge asks anything (replicated)."""
        if not self.cfg.latency_probes or not self.stream.ready():
            return
        world = rank_and_world()[1]
        n = self.cfg.latency_probes if world > 1 else min(self.cfg.latency_probes, len(q))
        for i in range(n):
            row = q[i % len(q)][None] if len(q) else np.zeros((1, q.shape[1]), np.float32)
            t = time.perf_counter()
            self.stream.search(row, k, rescore=self.cfg.rescore, record_hits=True)
            if len(q):
                self._probe_lat.add(time.perf_counter() - t)

    def _close_window(self) -> None:
        sums = torch.from_numpy(np.concatenate([self._sums, self._probe_lat.counts.astype(np.float64)]
                                               + [self._radius[n].counts.astype(np.float64) for n in RADII]))
        lat = np.asarray(self._lat, np.float64)
        if initialised():
            dist.all_reduce(sums)  # counts < 2**53: exact in float64
        hist = sums[len(SUMS):].numpy().astype(np.int64).reshape(1 + len(RADII), BINS + 2)
        probe_counts = hist[0]
        self._latency.merge(probe_counts)
        radius = {}
        for name, counts in zip(RADII, hist[1:], strict=True):
            self.radii[name].merge(counts)
            for p in RADIUS_QUANTILES:  # 0 = not certified at any drift (underflow bin)
                radius[f"{name}_p{round(100 * p)}"] = quantile(counts, p, underflow=0.0)
            radius[f"{name}_zero_share"] = float(counts[0] / counts.sum()) if counts.sum() else math.nan
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
                 "mean_eps_q": s["eps_q"] / nq, **radius, "mean_zeta1": s["zeta1"] / nq, "zeta_max": float(stats["zeta_max"]),
                 "fresh_hit_rate": s["fresh_queries_hit"] / max(s["fresh_queries"], 1.0),
                 "old_hit_rate": s["old_queries_hit"] / max(s["old_queries"], 1.0),
                 **labelled_point(s),
                 **extra_point(s),
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

    def _csls_push(self, s: torch.Tensor) -> None:
        """Keep the last ``csls_bank`` source anchors (bridged again at each query batch)."""
        from luma_pl.ring import write_rows

        if getattr(self, "_bank", None) is None:
            self._bank, self._bank_pos, self._bank_filled = torch.zeros(self.cfg.csls_bank, self.stream_bridge.d_s), 0, 0
        self._bank_pos, self._bank_filled = write_rows(self._bank, self._bank_pos, self._bank_filled, s)

    def _csls_rerank(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
        """(Q, k) ids of the candidates re-ranked by CSLS (``hubness``), or None before any anchor."""
        from luma_pl.bridge.hubness import csls_penalty
        from luma_pl.telemetry.safe_at_k import candidate_vectors

        if not getattr(self, "_bank_filled", 0):
            return None
        with torch.no_grad():
            anchors = self.bridge(self._bank[: self._bank_filled]).float().numpy()
        x, found = candidate_vectors(self.stream.memory.shard, ids, approximate=False)  # (Q, C, d) originals
        Q, C, d = x.shape
        pen = csls_penalty(x.reshape(-1, d), anchors, k=self.cfg.csls_k).reshape(Q, C)
        score = 2.0 * np.einsum("qd,qcd->qc", q.astype(np.float32), x) - pen
        score[~(found & (ids >= 0))] = -np.inf
        order = np.argsort(-score, axis=1, kind="stable")[:, : self.cfg.k]
        return np.take_along_axis(ids, order, axis=1)

    def _score_prequential(self, s: torch.Tensor, c: torch.Tensor) -> None:
        """Prequential sums of this rank's anchor pairs under the bridge as it is (added to the window's
        sums, all-reduced with them); nothing before the bridge maps anything (the same on every rank)."""
        from luma_pl.bridge.prequential import PrequentialScore

        if not self.stream.ready():
            return
        if getattr(self, "_prequential", None) is None:
            self._prequential = PrequentialScore(self.stream_bridge.d_c, 1024, (1, self.cfg.k))
        with torch.no_grad():
            mapped = self.bridge(s.float()).float() if len(s) else c.float()
            sums = self._prequential.observe(mapped, c.float())
        for name, v in zip(("preq_n", "preq_hit1", "preq_hitk", "preq_rr", "preq_cos"), sums.tolist(), strict=True):
            self._sums[SUMS.index(name)] += v

    def on_test_start(self) -> None:
        if self.cfg.hubness == "csls" and self.trainer.world_size > 1:
            raise ValueError(f"model.eval.hubness='csls' needs one process (the re-ranking reads candidate vectors "
                             f"from the local memory shard; world_size={self.trainer.world_size}); run it with "
                             "--trainer.devices 1, or hubness: none under DDP")
        # W&B charts of the windows read like the report's plots: x = events ingested, not batches
        from luma_pl.tracking.loggers import wandb_loggers

        if self.trainer.is_global_zero:
            for logger in wandb_loggers(self.trainer):
                logger.experiment.define_metric("eval/events")
                logger.experiment.define_metric("eval/*", step_metric="eval/events")

    def on_test_epoch_end(self) -> None:
        if self._events == 0:  # every rank replays the whole stream: the same decision everywhere
            dm = getattr(self.trainer, "datamodule", None)
            root = getattr(getattr(dm, "cfg", None), "root", "?")
            raise RuntimeError(f"evaluate: the replay of data.root={root!r} delivered 0 events in {self._batches} "
                               "batches (every sample skipped, or an empty stream); nothing was evaluated. Check the "
                               "shards (python -m data_modules.build_shards builds them; standard WebDataset shards "
                               "go through `build_shards webdataset`)")
        if self._batches % self.cfg.window_batches:
            self._close_window()
        self.stream_bridge.finish()  # a learning Procrustes bridge refreshes on its last pairs

    def on_test_end(self) -> None:
        # written here, not by the caller: under a spawning launcher only the workers hold the series
        from luma_pl.evaluation.report import summarise, write_report

        self.summary = summarise(self.series, self.cfg.k, latency=self._latency, radii=self.radii)
        # callbacks that drove the replay add their own section (SafeAtKLogger: its probe audit);
        # their on_test_end ran before this hook, so their figures are final
        sections = {}
        for cb in self.trainer.callbacks:
            section = cb.report_section() if callable(getattr(cb, "report_section", None)) else None
            if section is not None:
                name, prefix, figures = section
                sections[name] = figures
                self.summary.update({f"{prefix}{k}": v for k, v in figures.items()})
        if self.cfg.report_dir is None or not self.trainer.is_global_zero:
            return
        self.report_paths = write_report(self.series, self.summary, self.cfg.report_dir, extra={
            "config": {"eval": self.cfg.to_dict(), "bridge_kind": self.stream_bridge.kind,
                       "bridge": self.bridge.config.to_dict(),
                       "memory": self.memory_cfg.to_dict(), "world_size": self.trainer.world_size}, **sections},
            budgets={"hot_max_items": self.memory_cfg.hot_max_items, "warm_max_items": self.memory_cfg.warm_max_items},
            radii=self.radii)
        from luma_pl.tracking.loggers import wandb_loggers

        for logger in wandb_loggers(self.trainer):
            plots = {n: p for n, p in self.report_paths.items() if n != "report"}
            logger.experiment.summary.update({f"eval_summary/{k}": v for k, v in self.summary.items()
                                              if isinstance(v, (int, float))})
            logger.log_image("eval/plots", [str(p) for p in plots.values()], caption=list(plots))

