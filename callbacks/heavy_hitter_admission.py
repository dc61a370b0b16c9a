"""Lightning callback that configures heavy-hitter admission of the stream runtime and logs it.

What it drives: the ``StreamRuntime`` of the LightningModule (``pl_module.runtime()``: a bridge
module in ``train.py fit``, the ``StreamEvaluator`` in ``evaluate.py``), which owns the memory,
the replay rule and the admission (``luma_pl.stream.runtime``). At ``setup`` (fit and test alike) it
gives the runtime its admission (``runtime.use_admission(config)``); every batch the module's step
ingests the batch's items through the runtime (one dispatch in training and evaluation: an event
whose id was seen before is skipped and counted, ``admission/replayed``; heavy hitters go hot, the
rest warm; the decision's checksum is all-reduced under DDP so a divergence raises), and this
callback logs the counters at ``on_train_batch_end`` / ``on_test_batch_end`` (arrivals, drops, label
admissions/evictions, u_t, B_t) with ``pl_module.log_dict``.

Two index-update modes (``config.mode``):
* ``items``: passed arrivals go into the memory (heavy-hitter clusters hot, others warm).
* ``prototypes``: the memory holds the counter's unit centroids (id = label), upserted every
  ``upsert_interval`` arrivals; the heavy clusters' members live in the runtime's ``PrototypeIndex``
  (ids in RAM, vectors in an on-disk store under ``prototype_dir``, or a temporary folder), which
  answers the runtime's searches. Its members (ids, labels and vectors, at most
  ``members_per_label`` per label) are saved in the checkpoint. Every rank holds the same members; a
  ShardedMemory keeps its share of the centroids.

State (``state_dict``): the pipeline's counters and clusters and the prototype members (numpy
arrays become tensors, scalars stay primitives; ``load_state_dict`` uses ``.get`` defaults); the
ids seen travel with the module's runtime state.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from luma_pl.admission.pipeline import AdmissionConfig, AdmissionPipeline, PrototypeIndex


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
        self.runtime = None

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
    def runtime_of(pl_module: pl.LightningModule):
        """The module's stream runtime; an error with the fix when it has none."""
        runtime = pl_module.runtime() if callable(getattr(pl_module, "runtime", None)) else None
        if runtime is None:
            raise AttributeError(f"{type(pl_module).__name__} has no stream runtime (runtime() is None or missing); "
                                 "HeavyHitterAdmission configures the admission of the module's memory: give the "
                                 "module a memory (model.init_args.memory) or remove the callback")
        return runtime

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        runtime = self.runtime_of(pl_module)
        space = getattr(getattr(pl_module, "cfg", None), "item_space", None)
        if space is not None and space != self.space:
            raise ValueError(f"HeavyHitterAdmission space={self.space!r} but the module ingests item_space={space!r}; "
                             "set the callback's space to the module's item_space (one stream, one item space)")
        if self.pipeline is not None and runtime.admission is self.pipeline:
            return  # fit, then test, of the same module
        self.pipeline = runtime.use_admission(self.cfg, self.prototype_dir)
        self.prototypes = runtime.prototypes
        if self._pending_state is not None:
            self.pipeline.load_state_dict(self._pending_state)
            self._pending_state = None
        if self._pending_protos is not None and self.prototypes is not None:
            self.prototypes.load_state_dict(self._pending_protos)
            self._pending_protos = None
        self.runtime = runtime

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: dict, batch_idx: int) -> None:
        self._log(pl_module)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                          batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._log(pl_module)

    @property
    def replayed(self) -> int:
        """Events skipped because their id was seen before (the runtime's count)."""
        return int(self.runtime.counts["replayed"]) if self.runtime is not None else 0

    def _log(self, pl_module: pl.LightningModule) -> None:
        self.batches += 1
        if not self.log or self.pipeline is None:
            return
        metrics = self.pipeline.metrics()
        metrics["admission/replayed"] = float(self.replayed)
        if self.prototypes is not None:
            metrics.update({f"admission/prototype_{k}": float(v) for k, v in self.prototypes.stats.items()})
            metrics["admission/prototype_members"] = float(self.prototypes.held())
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    # -- checkpoint state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = self.pipeline.state_dict() if self.pipeline is not None else (self._pending_state or {})
        out = {"pipeline": _to_tensors(state), "batches": int(self.batches)}
        protos = self.prototypes.state_dict() if self.prototypes is not None else self._pending_protos
        if protos is not None:
            out["prototypes"] = _to_tensors(protos)
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches = int(state_dict.get("batches", 0))
        if "seen" in state_dict and self.runtime is not None and not len(self.runtime.seen):
            # a checkpoint from before the runtime held the replay rule: its ids seen were ours
            self.runtime.load_state_dict({"seen": _to_arrays(state_dict["seen"]).get("ids"),
                                          "counts": {"replayed": int(state_dict.get("replayed", 0))}})
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
