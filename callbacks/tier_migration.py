"""Lightning callback that schedules tier migration and logs it; the policy and its state live in
``luma_pl.memory.migration.HitMigration`` (see there for what one check does).

What it drives: the module's ``StreamRuntime`` (``pl_module.runtime()``: a bridge module in
``train.py fit``, the ``StreamEvaluator`` in ``evaluate.py``), which owns the memory and, from
``setup`` on, this callback's ``HitMigration`` (``runtime.use_migration``). Every ``every_n_batches``
batches of fit or test (batches, not ``global_step``: a module without an optimizer never advances
``global_step``) one check runs on every rank on its local shard (``runtime.migrate()``). The hits it
counts are the ones the runtime's searches record: the stream's queries in training, the replay's
queries in evaluation; a module that records none is refused at ``setup``.

Promotions, demotions and checks are counted and saved in checkpoints (``state_dict``: tensors
and primitives; ``load_state_dict`` with ``.get`` defaults).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from luma_pl.memory.migration import HitMigration, MigrationConfig


class TierMigration(pl.Callback):
    def __init__(self, every_n_batches: int = 50, capacity: int = 256, promote_min_count: int = 2,
                 idle_checks: int = 2, max_moves: int = 64, log: bool = True):
        if isinstance(every_n_batches, bool) or not isinstance(every_n_batches, int) or every_n_batches < 1:
            raise ValueError(f"TierMigration every_n_batches={every_n_batches!r} is invalid; use an int >= 1")
        self.every_n_batches = every_n_batches
        self.log = log
        self.policy = HitMigration(capacity, promote_min_count, idle_checks, max_moves)
        self.batches = 0
        self.runtime = None

    def configure(self, config: MigrationConfig | dict) -> None:
        """Replace the schedule and policy settings before the run starts (the top-level
        ``migration`` group lands here). Refused once the runtime holds the policy."""
        if self.runtime is not None:
            raise RuntimeError("TierMigration.configure: the stream runtime already holds this policy; "
                               "configure it before Trainer.fit / Trainer.test")
        cfg = config if isinstance(config, MigrationConfig) else MigrationConfig.from_dict(dict(config))
        cfg.validate()
        self.every_n_batches = cfg.every_n_batches
        self.policy = HitMigration(cfg.capacity, cfg.promote_min_count, cfg.idle_checks, cfg.max_moves)

    # the policy's counts, read by loggers and tests
    checks = property(lambda self: self.policy.checks)
    promotions = property(lambda self: self.policy.promotions)
    demotions = property(lambda self: self.policy.demotions)
    counter = property(lambda self: self.policy.counter)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # a module that says it asks the memory nothing would have every hot item look idle
        if getattr(pl_module, "records_hits", None) is False:
            raise ValueError(f"TierMigration: {type(pl_module).__name__} records no hits in the memory "
                             "(records_hits=False), so every hot item would look idle and be demoted; ask the "
                             "stream's queries (model.module.stream_queries_k > 0, and a memory) or remove "
                             "the TierMigration callback")
        runtime = pl_module.runtime() if callable(getattr(pl_module, "runtime", None)) else None
        if runtime is None:
            raise AttributeError(f"{type(pl_module).__name__} has no stream runtime (runtime() is None or missing); "
                                 "TierMigration migrates the module's memory: give the module a memory "
                                 "(model.init_args.memory) or remove the callback")
        runtime.use_migration(self.policy)
        self.runtime = runtime

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: dict, batch_idx: int) -> None:
        self._step(pl_module)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                          batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(pl_module)

    def _step(self, pl_module: pl.LightningModule) -> None:
        self.batches += 1
        if self.batches % self.every_n_batches:
            return
        self.runtime.migrate()
        if self.log:
            pl_module.log_dict({"migration/promotions": float(self.promotions),
                                "migration/demotions": float(self.demotions),
                                "migration/checks": float(self.checks)}, on_step=True, on_epoch=False, batch_size=1)

    # -- checkpoint state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = self.policy.state_dict()
        c = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
             for k, v in state.pop("counter").items()}
        return {"counter": c, "hits_seen": torch.from_numpy(state.pop("hits_seen")),
                "last_hit_check": torch.from_numpy(state.pop("last_hit_check")), "batches": self.batches, **state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        def arr(v):
            return v.numpy() if isinstance(v, torch.Tensor) else v

        self.policy.load_state_dict({
            "counter": {k: arr(v) for k, v in state_dict.get("counter", {}).items()},
            **{n: arr(state_dict.get(n)) for n in ("hits_seen", "last_hit_check")},
            **{n: state_dict.get(n, 0) for n in ("checks", "promotions", "demotions")}})
        self.batches = int(state_dict.get("batches", 0))
