"""Lightning callback that runs the streaming admission pipeline on every ingested replay batch.

Where the memory lives: on the LightningModule, as ``pl_module.memory`` (a ``TieredMemory``, or a
``ShardedMemory`` that keeps its share of each insert). It is looked up on every batch, so a memory
that ``MemoryCheckpoint`` restored and handed to the module (``on_restore``) is picked up, and the
pipeline's ``HeavyHitterPolicy`` is re-attached to it.

Per batch (``on_train_batch_end``): rows of ``batch['emb'][space]`` with ``batch['has'][space]``,
ids from ``batch['id']``, the one id per event that the replay computes (``luma_pl.stream.ids``;
the evaluator uses the same ids). Under DDP every rank all-gathers the batch rows (in rank order), runs the
identical pipeline on the identical global batch, and the decision's checksum is all-reduced (min
== max) so a divergence raises instead of silently splitting the replicated state. A B = 0 padding
batch still joins those collectives. An event whose id was admitted before (the next epoch over the
same shards, a shard that repeats keys) is a replay: skipped and counted (``admission/replayed``),
never inserted twice (``luma_pl.stream.pool.SeenIds.first_arrivals``, the evaluator's rule too); the
ids seen are replicated on every rank and saved in the checkpoint. Counters (arrivals, drops, label admissions/evictions, u_t,
B_t) are logged with ``pl_module.log_dict`` and saved in checkpoints (``state_dict``: numpy arrays
become tensors, scalars stay primitives; ``load_state_dict`` uses ``.get`` defaults).

Two index-update modes (``config.mode``):
* ``items``: passed arrivals go into ``pl_module.memory`` (heavy-hitter clusters hot, others warm).
* ``prototypes``: ``pl_module.memory`` holds the counter's unit centroids (id = label), upserted
  every ``upsert_interval`` arrivals; the heavy clusters' members live in a ``PrototypeIndex``
  (ids in RAM, vectors in an on-disk store under ``prototype_dir``, or a temporary folder), set as
  ``pl_module.prototypes`` so anything that asks questions calls ``pl_module.prototypes.search``.
  Its members (ids, labels and vectors, at most ``members_per_label`` per label) are saved in the
  checkpoint. Every rank holds the same members; a ShardedMemory keeps its share of the centroids.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from luma_pl.admission.distributed import agree, allgather_rows
from luma_pl.admission.pipeline import AdmissionConfig, AdmissionPipeline, PrototypeIndex
from luma_pl.stream.ids import batch_ids
from luma_pl.stream.pool import SeenIds


def _to_tensors(obj):
    if isinstance(obj, dict):
        return {k: _to_tensors(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj)).clone()
    return obj


def _to_arrays(obj):
    if isinstance(obj, dict):
        return {k: _to_arrays(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        return obj.cpu().numpy()
    return obj


class HeavyHitterAdmission(pl.Callback):
    """``config``: an ``AdmissionConfig`` or its dict (``mode`` 'items' or 'prototypes'); ``space``:
    the embedding space to admit; ``log``: log the counters every
    batch; ``prototype_dir``: prototypes mode, the folder of the member store (None = temporary)."""

    def __init__(self, config: AdmissionConfig | None = None, space: str = "minilm",
                 log: bool = True, prototype_dir: str | None = None):
        cfg = config if isinstance(config, AdmissionConfig) else AdmissionConfig.from_dict(config or {})
        cfg.validate()
        self.cfg = cfg
        self.space = space
        self.log = log
        self.prototype_dir = prototype_dir
        self.pipeline: AdmissionPipeline | None = None
        self.prototypes: PrototypeIndex | None = None
        self._pending_state: dict | None = None
        self._pending_protos: dict | None = None
        self.batches = 0
        self.seen = SeenIds()
        self.replayed = 0

    def configure(self, config: AdmissionConfig | dict) -> None:
        """Replace the admission config before the run starts (train.py's top-level ``admission``
        group, the one evaluate.py reads too, lands here). Refused once the pipeline is built: its
        counters and clusters were made under the old config."""
        if self.pipeline is not None:
            raise RuntimeError("HeavyHitterAdmission.configure: the admission pipeline is already built; "
                               "configure it before Trainer.fit")
        cfg = config if isinstance(config, AdmissionConfig) else AdmissionConfig.from_dict(config)
        cfg.validate()
        self.cfg = cfg

    @staticmethod
    def memory_of(pl_module: pl.LightningModule):
        memory = getattr(pl_module, "memory", None)
        if memory is None:
            raise AttributeError(f"{type(pl_module).__name__} has no 'memory' attribute; HeavyHitterAdmission "
                                 "inserts into pl_module.memory (a TieredMemory or ShardedMemory): set it")
        return memory

    def _pipeline(self, dim: int) -> AdmissionPipeline:
        if self.pipeline is None:
            self.pipeline = AdmissionPipeline(self.cfg, dim)
            if self._pending_state is not None:
                self.pipeline.load_state_dict(self._pending_state)
                self._pending_state = None
        return self.pipeline

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: dict, batch_idx: int) -> None:
        memory = self.memory_of(pl_module)
        dim = memory.dim
        emb = batch["emb"].get(self.space)
        has = batch["has"].get(self.space)
        if emb is None or len(batch["key"]) == 0:
            x = np.zeros((0, dim), np.float32)
            ids = np.zeros(0, np.int64)
        else:
            keep = has.cpu().numpy().astype(bool)
            x = emb.detach().cpu().numpy().astype(np.float32)[keep]
            ids = batch_ids(batch)[keep]
        if x.shape[1] != dim:
            raise ValueError(f"batch['emb'][{self.space!r}] has d={x.shape[1]} but the memory holds d={dim}")
        ids, x, _ = allgather_rows(ids, x)  # the global batch, identical on every rank
        fresh = self.seen.first_arrivals(ids)
        self.replayed += int(len(ids) - fresh.sum())
        ids, x = ids[fresh], x[fresh]
        pipe = self._pipeline(dim)
        if self.cfg.mode == "prototypes":
            decision = self._prototype_index(pl_module, memory).ingest(ids, x)
        else:
            decision = pipe.ingest_items(memory, ids, x) if len(ids) else pipe.step(x)
        agree(decision.checksum(), "the admission decision")
        self.batches += 1
        if self.log:
            metrics = pipe.metrics()
            metrics["admission/replayed"] = float(self.replayed)
            if self.prototypes is not None:
                metrics.update({f"admission/prototype_{k}": float(v) for k, v in self.prototypes.stats.items()})
                metrics["admission/prototype_members"] = float(self.prototypes.held())
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=max(1, len(ids)))

    def _prototype_index(self, pl_module: pl.LightningModule, memory) -> PrototypeIndex:
        if self.prototypes is None or self.prototypes.memory is not memory:  # first batch, or a restored memory
            if self.prototypes is not None:
                self.prototypes.memory = memory
            else:
                self.prototypes = PrototypeIndex(self.pipeline, memory, directory=self.prototype_dir)
                if self._pending_protos is not None:
                    self.prototypes.load_state_dict(self._pending_protos)
                    self._pending_protos = None
        pl_module.prototypes = self.prototypes
        return self.prototypes

    # -- checkpoint state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = self.pipeline.state_dict() if self.pipeline is not None else (self._pending_state or {})
        out = {"pipeline": _to_tensors(state), "batches": int(self.batches), "replayed": int(self.replayed),
               "seen": _to_tensors(self.seen.state_dict())}
        protos = self.prototypes.state_dict() if self.prototypes is not None else self._pending_protos
        if protos is not None:
            out["prototypes"] = _to_tensors(protos)
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches = int(state_dict.get("batches", 0))
        self.replayed = int(state_dict.get("replayed", 0))
        self.seen = SeenIds()
        self.seen.load_state_dict(_to_arrays(state_dict.get("seen", {})))
        state = _to_arrays(state_dict.get("pipeline", {}))
        if self.pipeline is not None:
            self.pipeline.load_state_dict(state)
        else:
            self._pending_state = state
        protos = state_dict.get("prototypes")
        if protos is not None:
            protos = _to_arrays(protos)
            if self.prototypes is not None:
                self.prototypes.load_state_dict(protos)
            else:
                self._pending_protos = protos
