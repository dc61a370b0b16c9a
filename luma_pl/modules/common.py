"""What both bridge LightningModules share: reading anchor pairs from a replay batch (or encoding
raw media on the fly), and retrieval validation over the whole validation stream.

Replay batch contract: docs/architecture.md. A padding batch (B = 0) yields 0 pairs and still
reaches every collective, so ranks stay in step.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn

from luma_pl.bridge.distributed import gather_rows
from luma_pl.configuration import StrictConfig, as_config, require  # noqa: F401 (as_config re-exported)
from luma_pl.encoders.media_batch import MEDIA_MODALITY, encode_media
from luma_pl.metrics import build
from luma_pl.stream.ids import batch_ids
from luma_pl.tracking.loggers import WANDB_RUN_KEY

PREQUENTIAL_KEY = "luma_prequential"
"""Checkpoint key of the prequential ring (rank 0's; other ranks restart theirs empty on resume)."""
STREAM_STATE_KEY = "luma_stream"
"""Checkpoint key of the module's ``StreamRuntime`` state (ids seen, counters)."""


@dataclasses.dataclass
class BridgeModuleConfig(StrictConfig):
    source_space: str = "wordllama"
    """Batch ``emb`` key of the source anchors (s)."""
    canonical_space: str = "minilm"
    """Batch ``emb`` key of the canonical anchors (c)."""
    query_space: str = "query_wordllama"
    """Validation: source-space queries, bridged before scoring."""
    item_space: str = "minilm"
    """Validation: canonical-space items; an item is relevant to the query of its own event."""
    ks: list[int] = dataclasses.field(default_factory=lambda: [1, 10])
    """Cut-offs k of the logged val/<metric>@k."""
    metrics: list[str] = dataclasses.field(default_factory=lambda: ["recall", "mrr", "ndcg", "hit_rate"])
    """Metrics logged at validation: any of recall, mrr, ndcg, hit_rate."""
    media_keys: dict[str, str] = dataclasses.field(default_factory=dict)
    """Space -> media extension to encode on the fly when the batch has no precomputed ``emb`` for it
    (e.g. {"minilm": "txt"}); needs an encoder for that space."""
    score_chunk: int = 1024
    """Validation queries scored per chunk (bounds the (chunk, items) score matrix)."""
    stream_queries_k: int = 10
    """Training with a memory: each batch's ``query_space`` rows are bridged and asked of the memory
    (top-``stream_queries_k``, recorded as hits), so ``TierMigration`` sees what the stream asks for;
    0 = ask nothing (then a ``TierMigration`` callback is refused at set-up: it would see no hits)."""

    prequential_gallery: int = 1024
    """Prequential (test-then-train) scores of every training batch before the bridge learns from it
    (``luma_pl.bridge.prequential``, logged as ``preq/recall@k``, ``preq/mrr@k``, ``preq/cosine``):
    the last this many canonical anchors are the gallery's distractors beside the batch's own.
    0 = off."""

    holdout_by: str = "none"
    """A held-out slice of the anchor stream (``luma_pl.stream.holdout``): 'none', 'hash' (a random
    ``holdout_fraction`` of the events), 'topic' (whole topics) or 'time' (``ts >= holdout_after_ts``).
    Held-out pairs are never learned from; validation asks only their queries, so ``val/*`` (what
    EarlyStopping, ModelCheckpoint and sweeps select on) measures pairs the bridge did not see."""
    holdout_fraction: float = 0.1
    """Share of events ('hash') or topics ('topic') held out."""
    holdout_after_ts: int | None = None
    """'time': events with ``ts`` at or after this are held out."""

    def validate(self) -> None:
        n = "BridgeModuleConfig"
        from luma_pl.stream.holdout import HOLDOUT_BY

        require(self.holdout_by in HOLDOUT_BY, n, "holdout_by", self.holdout_by, f"use one of {HOLDOUT_BY}")
        require(isinstance(self.holdout_fraction, (int, float)) and 0 < self.holdout_fraction < 1, n,
                "holdout_fraction", self.holdout_fraction, "use a share in (0, 1), e.g. 0.1")
        require(self.holdout_by != "time" or isinstance(self.holdout_after_ts, int), n, "holdout_after_ts",
                self.holdout_after_ts, "holdout_by: time needs the ts from which events are held out, e.g. 1700000000")
        require(all(isinstance(k, int) and k >= 1 for k in self.ks) and self.ks, n, "ks", self.ks, "use positive ints, e.g. [1, 10]")
        for ext in self.media_keys.values():
            require(ext in MEDIA_MODALITY, n, "media_keys", self.media_keys, f"extensions must be in {sorted(MEDIA_MODALITY)}")
        require(self.score_chunk >= 1, n, "score_chunk", self.score_chunk, "use a positive chunk size")
        require(isinstance(self.prequential_gallery, int) and self.prequential_gallery >= 0, n, "prequential_gallery",
                self.prequential_gallery, "use an int >= 0, e.g. 1024 (0 = no prequential scores)")
        require(isinstance(self.stream_queries_k, int) and self.stream_queries_k >= 0, n, "stream_queries_k",
                self.stream_queries_k, "use an int >= 0 (0 = the training stream asks the memory nothing)")


# The LightningModules a checkpoint's ``_class_path`` hyper-parameter may name. A checkpoint is
# untrusted data and LightningCLI imports whatever class path it holds (``fit --ckpt_path``), so the
# name is checked against this list before anything is imported (issue 13).
MODULE_CLASS_PATHS = {
    "luma_pl.modules.bridge_module.ProcrustesBridgeModule": "luma_pl.modules.bridge_module.ProcrustesBridgeModule",
    "luma_pl.modules.ProcrustesBridgeModule": "luma_pl.modules.bridge_module.ProcrustesBridgeModule",
    "luma_pl.modules.learned_bridge_module.LearnedBridgeModule": "luma_pl.modules.learned_bridge_module.LearnedBridgeModule",
    "luma_pl.modules.LearnedBridgeModule": "luma_pl.modules.learned_bridge_module.LearnedBridgeModule",
}


def check_class_path(value, argument: str) -> str:
    """The canonical class path of ``value`` if it names one of the project's own bridge
    LightningModules, else a ``ValueError`` naming ``argument``; never imports anything."""
    if not isinstance(value, str) or value not in MODULE_CLASS_PATHS:
        raise ValueError(f"{argument}: the checkpoint's _class_path={value!r} is not one of luma-pl's bridge modules "
                         f"({sorted(set(MODULE_CLASS_PATHS.values()))}); it was not imported. Pass a checkpoint "
                         "written by train.py")
    return MODULE_CLASS_PATHS[value]


def _nested_class_paths(x, path: str = "") -> list[str]:
    """Every ``class_path``/``_class_path``/``_instantiator`` key nested in a hyper-parameter dict."""
    found = []
    if isinstance(x, dict):
        for k, v in x.items():
            if k in ("class_path", "_class_path", "_instantiator"):
                found.append(f"{path}{k}")
            found += _nested_class_paths(v, f"{path}{k}.")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            found += _nested_class_paths(v, f"{path}{i}.")
    return found


def check_hparams(hparams: dict, argument: str) -> str | None:
    """Check a checkpoint's ``hyper_parameters`` before LightningCLI parses (and imports) them: the
    top-level ``_class_path`` must be allow-listed and nothing nested may name a class to import.
    Returns the canonical class path (None when the checkpoint has none)."""
    if not isinstance(hparams, dict):
        raise ValueError(f"{argument}: the checkpoint's hyper_parameters is a {type(hparams).__name__}, expected a "
                         "dict; pass a checkpoint written by train.py")
    rest = {k: v for k, v in hparams.items() if k not in ("_class_path", "_instantiator")}
    nested = _nested_class_paths(rest)
    if nested:
        raise ValueError(f"{argument}: the checkpoint's hyper_parameters name classes to import at {nested}; "
                         "luma-pl checkpoints hold plain values only. Pass a checkpoint written by train.py")
    return check_class_path(hparams["_class_path"], argument) if "_class_path" in hparams else None


class BridgeModuleBase(LightningModule):
    """Subclasses set ``self.bridge`` (forward: (N, d_s) -> unit (N, d_c)) and ``self.cfg``."""

    cfg: BridgeModuleConfig
    dims: dict[str, int]

    def _set_encoders(self, encoders) -> None:
        # a plain dict, not registered: frozen weights stay out of checkpoints and out of DDP
        self._encoders = dict(encoders or {})
        for space in self.cfg.media_keys:
            if space not in self._encoders:
                raise ValueError(f"media_keys names space {space!r} but encoders has {sorted(self._encoders)}; pass an encoder for it")

    def on_fit_start(self) -> None:
        for enc in self._encoders.values():
            enc.to(self.device)

    def save_init_hparams(self, **configs) -> None:
        """hparams = the init arguments as plain dicts (checkpoints stay loadable with
        weights_only=True), plus ``_class_path`` so ``train.py fit --ckpt_path`` can rebuild the
        module from the checkpoint the way LightningCLI expects."""
        cls = type(self)
        self.save_hyperparameters({
            "_class_path": f"{cls.__module__}.{cls.__qualname__}", **configs,
            "memory": None if self.memory_cfg is None else self.memory_cfg.to_dict(), "memory_dir": self.memory_dir})

    # bridge config fields a resumed run may change: schedule and loss knobs whose new value applies
    # from the resume on (the saved statistics/weights stay valid); any other field (dimensions, kind,
    # centring, activation...) changes what the saved tensors mean and is refused
    RESUMABLE_BRIDGE_FIELDS = ("lam", "refresh_every", "sync_every", "reference", "lr", "weight_decay",
                               "mse_weight", "gather_negatives", "max_logit_scale", "init_temperature")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """``Trainer.fit(ckpt_path=...)``: the bridge config this module was built with is the one the
        run asked for. The checkpoint's config (``bridge._extra_state``) would otherwise win silently
        in ``set_extra_state``: resumable fields take this module's value, others must agree."""
        self._load_stream_state(checkpoint)
        state = checkpoint.get(PREQUENTIAL_KEY)
        self._prequential_state = state if isinstance(state, dict) else None  # read when the ring is made
        extra = checkpoint.get("state_dict", {}).get("bridge._extra_state")
        saved = extra.get("config") if isinstance(extra, dict) else None
        if not isinstance(saved, dict):
            return  # bridge_from_state / set_extra_state report a missing config
        mine = self.bridge.config.to_dict()
        changed = {k: (saved[k], v) for k, v in mine.items() if k in saved and saved[k] != v}
        fixed = {k: ov for k, ov in changed.items() if k not in self.RESUMABLE_BRIDGE_FIELDS}
        if fixed:
            k, (old, new) = next(iter(fixed.items()))
            raise ValueError(f"resume: the checkpoint's bridge has {k}={old!r} but this run asks for {k}={new!r}; "
                             f"{k} cannot change on resume (the saved tensors depend on it). Resume with "
                             f"--model.init_args.bridge.{k}={old!r}, or start a new run (no --ckpt_path)")
        if changed:
            checkpoint["state_dict"]["bridge._extra_state"] = {**extra, "config": {**saved, **{
                k: new for k, (_, new) in changed.items()}}}
            for opt in checkpoint.get("optimizer_states", []) or []:  # the optimizer's saved lr would win too
                for i, group in enumerate(opt.get("param_groups", [])):
                    if "lr" in changed:
                        group["lr"] = changed["lr"][1]
                    if "weight_decay" in changed and i == 0:  # group 0: the map's weights (make_optimizer)
                        group["weight_decay"] = changed["weight_decay"][1]
            rank_zero_warn(f"resume: bridge settings changed from the checkpoint's and applied from now on: "
                           f"{ {k: f'{o!r} -> {n!r}' for k, (o, n) in changed.items()} }")

    # --- the stream runtime the callbacks drive ---------------------------------------------------
    def _set_memory(self, memory, memory_dir: str | None) -> None:
        """``memory``: a MemoryConfig (or dict) -> the stream runtime (``luma_pl.stream.runtime``) that
        owns the memory, the replay rule, admission and migration is built on first use
        (``runtime()``, at the latest in ``setup``, where the process group exists: a ShardedMemory
        under DDP). Each training batch's items are ingested through it and its queries asked of it;
        the admission, migration, Safe@k and memory-checkpoint callbacks configure and schedule it.
        None = no memory (the bridge alone is trained)."""
        from luma_pl.memory import MemoryConfig

        self.memory_cfg = None if memory is None else as_config(MemoryConfig, memory)
        self.memory_dir = memory_dir
        self.stream = None

    def runtime(self):
        """The module's ``StreamRuntime`` (built on first call), or None when it has no memory."""
        if self.stream is None and getattr(self, "memory_cfg", None) is not None:
            from luma_pl.stream.bridge import StreamBridge
            from luma_pl.stream.runtime import StreamRuntime

            # the bridge learns through training_step (Lightning's optimizer / the closed-form update);
            # the runtime only maps queries with it, so it neither steps nor freezes it
            self.stream = StreamRuntime.build(self.memory_cfg, self.memory_dir,
                                              StreamBridge(self.bridge, learn=False, freeze=False))
        return self.stream

    @property
    def memory(self):
        """The runtime's memory (TieredMemory, or ShardedMemory under DDP); None without one."""
        stream = self.__dict__.get("stream")
        return None if stream is None else stream.memory

    @memory.setter
    def memory(self, value) -> None:
        stream = self.runtime() if value is not None else self.__dict__.get("stream")
        if stream is None:
            raise ValueError("memory: this module has no memory config (model.init_args.memory); set one "
                             "to hold a memory")
        stream.memory = value

    def setup(self, stage: str) -> None:
        self.runtime()

    def score_before_learning(self, s: torch.Tensor, c: torch.Tensor) -> None:
        """Prequential scores of this batch's pairs under the bridge as it is, before it learns from
        them (``luma_pl.bridge.prequential``). Every rank calls this on every step: the sums are
        all-reduced (a rank with no pairs adds zeros), then logged as ``preq/*`` by every rank alike."""
        gallery = self.cfg.prequential_gallery
        if gallery == 0 or not self.bridge_ready():  # bridge_ready: the same decision on every rank
            return
        from luma_pl.bridge.prequential import PrequentialScore
        from luma_pl.ranks import initialised

        d_c = int(self.bridge.config.d_c)
        if getattr(self, "prequential", None) is None:
            self.prequential = PrequentialScore(d_c, gallery, tuple(self.cfg.ks))
            self.prequential.load_state_dict(getattr(self, "_prequential_state", None) or {})
        with torch.no_grad():
            mapped = self.bridge(s.float()).float() if len(s) else c.new_zeros(0, d_c).float()
            sums = self.prequential.observe(mapped, c.float())  # this rank's; the ring stays rank-local
        if initialised():
            sums = sums.to(self.device)
            torch.distributed.all_reduce(sums)
        for name, value in self.prequential.rates(sums.cpu()).items():
            self.log(f"preq/{name}", value, on_step=True, on_epoch=False)
        self.log("preq/gallery", float(self.prequential.filled), on_step=True, on_epoch=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if getattr(self, "prequential", None) is not None:
            checkpoint[PREQUENTIAL_KEY] = self.prequential.state_dict()
        if self.stream is not None:  # the ids seen (replay rule) and the stream's counters
            state = self.stream.state_dict()
            checkpoint[STREAM_STATE_KEY] = {"seen": torch.from_numpy(state["seen"]), "counts": state["counts"]}
        run_id = self._wandb_run_id()
        if run_id is not None:  # train.py --ckpt_path continues this W&B run (LumaCLI._continue_wandb_run)
            checkpoint[WANDB_RUN_KEY] = {"id": run_id}

    def _wandb_run_id(self) -> str | None:
        """The id of the run of this trainer's first ``WandbLogger`` (None without one)."""
        from luma_pl.tracking.loggers import wandb_loggers

        if self._trainer is None:
            return None
        for lg in wandb_loggers(self._trainer):
            if isinstance(lg.version, str) and lg.version:
                return lg.version
        return None

    def _load_stream_state(self, checkpoint: dict) -> None:
        state = checkpoint.get(STREAM_STATE_KEY)
        if state is not None and self.runtime() is not None:
            self.stream.load_state_dict(state)

    @property
    def records_hits(self) -> bool:
        """Whether training asks the memory the stream's queries (``TierMigration`` needs it)."""
        return self.memory_cfg is not None and self.cfg.stream_queries_k > 0

    def ingest_items(self, batch: dict) -> None:
        """Ingest this batch's ``item_space`` rows into the stream runtime (admission, replay rule).
        A collective under DDP: every rank calls it on every batch (0 rows on padding)."""
        if self.runtime() is None:
            return
        x = np.zeros((0, self.memory_cfg.dim), np.float32)
        ids = np.zeros(0, np.int64)
        if self._can_read(batch, self.cfg.item_space) and len(batch.get("key", [])):
            e, h = self.space(batch, self.cfg.item_space)
            keep = h.cpu().numpy().astype(bool)
            x = e.detach().float().cpu().numpy()[keep]
            ids = batch_ids(batch)[keep]
        self.stream.ingest(ids, x)

    @torch.no_grad()
    def ask_stream_queries(self, batch: dict) -> int:
        """Bridge this batch's ``query_space`` rows and search the memory with them, recording hits.
        A collective on a ShardedMemory: every rank calls it on every batch (0 rows on padding).
        Returns the number of queries asked."""
        if not self.records_hits or self.memory is None or not self.bridge_ready():
            return 0
        x = np.zeros((0, self.memory_cfg.dim), np.float32)  # no query rows: still joins the collective
        if self._can_read(batch, self.cfg.query_space):
            a, h = self.space(batch, self.cfg.query_space)
            if bool(h.any()):
                x = self.bridge(a[h].float()).float().cpu().numpy()
        self.stream.search(x, self.cfg.stream_queries_k, record_hits=True)
        return len(x)

    # --- reading a batch ----------------------------------------------------------------------
    def space(self, batch: dict, space: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(emb (B, d), has (B,))`` for a space, from the batch or encoded from raw media."""
        emb, has = batch.get("emb", {}), batch.get("has", {})
        if space in emb:
            e = emb[space].to(self.device)
            h = has.get(space, torch.ones(e.shape[0], dtype=torch.bool)).to(self.device)
            return e, h
        B = len(batch.get("key", []))
        if space in self.cfg.media_keys:
            ext = self.cfg.media_keys[space]
            raw = batch.get("media", {}).get(ext, [None] * B)
            return encode_media(raw, ext, self._encoders[space], self.dims[space], self.device)
        if B == 0:  # a padding batch may omit spaces
            return torch.zeros(0, self.dims[space], device=self.device), torch.zeros(0, dtype=torch.bool, device=self.device)
        raise KeyError(f"batch has no emb[{space!r}] (has {sorted(emb)}) and media_keys has no entry for it; "
                       "replay that space or set media_keys + encoders")

    def pairs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchor pairs ``s`` (n, d_s), ``c`` (n, d_c): rows where both spaces are present."""
        s, hs = self.space(batch, self.cfg.source_space)
        c, hc = self.space(batch, self.cfg.canonical_space)
        both = hs & hc & ~self.held_out(batch).to(hs.device)  # a held-out pair is never learned from
        return s[both], c[both]

    def held_out(self, batch: dict) -> torch.Tensor:
        """(B,) bool: the batch's events in the held-out slice (``holdout_by``; all False without one)."""
        from luma_pl.stream.holdout import holdout_mask

        return holdout_mask(batch, self.cfg.holdout_by, self.cfg.holdout_fraction, self.cfg.holdout_after_ts)

    # --- validation ------------------------------------------------------------------------------
    def bridge_ready(self) -> bool:
        return True

    # --- retrieval on a held-out stream: validation in fit, and `train.py test` (same metrics) ---
    def on_validation_epoch_start(self) -> None:
        self._val_q, self._val_pos, self._val_other = [], [], []
        self._val_without_queries = 0

    def _can_read(self, batch: dict, space: str) -> bool:
        return space in batch.get("emb", {}) or space in self.cfg.media_keys or len(batch.get("key", [])) == 0

    @torch.no_grad()
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if not (self._can_read(batch, self.cfg.query_space) and self._can_read(batch, self.cfg.item_space)):
            # a stream of anchor pairs only (no validation queries): nothing to validate, said once at
            # the epoch's end, never a crash that would also lose the final checkpoint
            self._val_without_queries += 1
            return
        q, hq = self.space(batch, self.cfg.query_space)
        x, hx = self.space(batch, self.cfg.item_space)
        both = hq & hx
        if self.cfg.holdout_by != "none":  # only the held-out events' queries; every item stays in the gallery
            both = both & self.held_out(batch).to(hq.device)
        if self.bridge_ready() and bool(both.any()):
            self._val_q.append(self.bridge(q[both]).float())  # (n, d_c) bridged queries
        self._val_pos.append(x[both].float())  # (n, d_c): item i is the one relevant to query i
        self._val_other.append(x[hx & ~both].float())  # items not asked for: distractors

    def on_validation_epoch_end(self) -> None:
        self._log_retrieval("val")

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """``train.py test --ckpt_path <ckpt>``: the trained bridge's retrieval on the test stream
        (``data.root``), logged as ``test/*``; the streaming replay with memory is evaluate.py."""
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._log_retrieval("test")

    def _log_retrieval(self, stage: str) -> None:
        if self._val_without_queries:
            rank_zero_warn(f"{stage}: {self._val_without_queries} batch(es) have no emb[{self.cfg.query_space!r}] "
                           f"or emb[{self.cfg.item_space!r}], so they were not validated; point data.val_root at shards "
                           "with validation queries, or set trainer.limit_val_batches=0 to skip validation")
        if not self.bridge_ready():  # e.g. Procrustes before its first refresh: same on every rank
            return
        d = self.dims[self.cfg.item_space]
        cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, d, device=self.device)  # noqa: E731
        q, pos, other = cat(self._val_q), cat(self._val_pos), cat(self._val_other)
        # gallery = every rank's positives (rank order), then every rank's distractors
        pos_all, offset, _ = gather_rows(pos)
        other_all, _, _ = gather_rows(other)
        gallery = torch.cat([pos_all, other_all])  # (I, d_c)
        metrics = build(tuple(self.cfg.metrics), tuple(self.cfg.ks))
        for i in range(0, max(q.shape[0], 1), self.cfg.score_chunk):
            qc = q[i : i + self.cfg.score_chunk]
            if qc.shape[0] == 0:
                break
            scores = qc @ gallery.T  # (chunk, I)
            rel = torch.zeros_like(scores, dtype=torch.bool)
            rel[torch.arange(qc.shape[0]), offset + i + torch.arange(qc.shape[0], device=self.device)] = True
            for m in metrics.values():
                m.update(scores, rel)
        for name, m in metrics.items():
            value = m.compute()  # sums are all-reduced across ranks inside compute()
            if not torch.isnan(value):
                self.log(f"{stage}/{name}", value.float(), sync_dist=False, rank_zero_only=False)
        # the per-rank count, summed over ranks (compute() above syncs the states only transiently)
        self.log(f"{stage}/queries", float(metrics[next(iter(metrics))].count), sync_dist=True, reduce_fx="sum")
