"""Lightning callback that promotes / demotes memory items on access statistics and enforces budgets.

Where the memory lives: ``pl_module.memory`` (a ``TieredMemory``, or a ``ShardedMemory`` whose
``local`` shard is migrated), looked up at every check, like ``HeavyHitterAdmission``.

Every ``every_n_batches`` training batches (batches, not ``global_step``: a module without an
optimizer never advances ``global_step``):

1. the hits the memory recorded since the last check (``memory.hits`` minus a snapshot) are fed,
   weighted, into a Space-Saving counter over item ids (capacity ``capacity``);
2. under DDP the per-rank summaries are all-gathered as tensors and merged (pruned to the
   capacity), so every rank sees the same heavy set (the counter then continues from it);
3. heavy ids (count >= ``promote_min_count``) that are warm here are promoted, at most
   ``max_moves`` per check and never more than the hot tier holds;
4. hot ids that are not heavy and had no hit for ``idle_checks`` checks are demoted (``max_moves``);
5. budgets: ``memory.audit()`` must pass (it raises naming the broken invariant).

Promotions, demotions and checks are counted and saved in checkpoints (``state_dict``: tensors
and primitives; ``load_state_dict`` with ``.get`` defaults).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from luma_pl.admission.distributed import allgather_space_saving
from luma_pl.admission.heavy_hitters import CounterConfig, HeavyHitterCounter
from luma_pl.memory.policy import BUFFER, HOT, WARM


class TierMigration(pl.Callback):
    def __init__(self, every_n_batches: int = 50, capacity: int = 256, promote_min_count: int = 2,
                 idle_checks: int = 2, max_moves: int = 64, log: bool = True):
        for name, value, low in (("every_n_batches", every_n_batches, 1), ("capacity", capacity, 1),
                                 ("promote_min_count", promote_min_count, 1), ("idle_checks", idle_checks, 1),
                                 ("max_moves", max_moves, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"TierMigration {name}={value!r} is invalid; use an int >= {low}")
        self.every_n_batches = every_n_batches
        self.capacity = capacity
        self.promote_min_count = promote_min_count
        self.idle_checks = idle_checks
        self.max_moves = max_moves
        self.log = log
        self.counter = HeavyHitterCounter(CounterConfig(policy="space_saving", capacity=capacity))
        self.hits_seen = np.zeros(0, np.int64)  # (keys,) memory.hits at the last check
        self.last_hit_check = np.zeros(0, np.int64)  # (keys,) check index of each key's last hit
        self.batches = 0
        self.checks = 0
        self.promotions = 0
        self.demotions = 0

    def _grow(self, n: int) -> None:
        """Room for keys up to ``n``. A key first seen at this check counts as hit now: an item that
        admission has just placed gets ``idle_checks`` checks of grace before it can be demoted."""
        if n > len(self.hits_seen):
            for name, fill in (("hits_seen", 0), ("last_hit_check", self.checks)):
                old = getattr(self, name)
                new = np.full(n, fill, np.int64)
                new[: len(old)] = old
                setattr(self, name, new)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # a module that says it asks the memory nothing would have every hot item look idle
        if getattr(pl_module, "records_hits", None) is False:
            raise ValueError(f"TierMigration: {type(pl_module).__name__} records no hits in the memory "
                             "(records_hits=False), so every hot item would look idle and be demoted; ask the "
                             "stream's queries (model.module.stream_queries_k > 0, and a memory) or remove "
                             "the TierMigration callback")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: dict, batch_idx: int) -> None:
        self.batches += 1
        if self.batches % self.every_n_batches:
            return
        memory = getattr(pl_module, "memory", None)
        if memory is None:
            raise AttributeError(f"{type(pl_module).__name__} has no 'memory' attribute; TierMigration "
                                 "migrates pl_module.memory (a TieredMemory or ShardedMemory): set it")
        self.check(memory.shard)
        if self.log:
            pl_module.log_dict({"migration/promotions": float(self.promotions),
                                "migration/demotions": float(self.demotions),
                                "migration/checks": float(self.checks)}, on_step=True, on_epoch=False, batch_size=1)

    def check(self, memory) -> dict[str, int]:
        """One migration pass over a TieredMemory (a collective under DDP); returns the moves made."""
        self.checks += 1
        n = memory.num_keys
        self._grow(n)
        delta = memory.hits[:n] - self.hits_seen[:n]
        hit_keys = np.flatnonzero(delta > 0)
        self.hits_seen[:n] = memory.hits[:n]
        self.last_hit_check[hit_keys] = self.checks
        if len(hit_keys):
            self.counter.update(memory.ids[hit_keys], delta[hit_keys])
        labs, cnt, err = allgather_space_saving(*self.counter.summary(), self.capacity)
        self.counter.load_summary(labs, cnt, err)
        heavy_ids = labs[cnt >= self.promote_min_count]  # most counted first
        moved = {"promoted": 0, "demoted": 0}
        # promote heavy warm items (their exact originals go hot)
        keys = np.array([memory.key_of[i] for i in heavy_ids.tolist() if i in memory.key_of], np.int64)
        if len(keys):
            keys = keys[np.isin(memory.locations[keys], (WARM, BUFFER))]
            room = max(0, memory.hot_capacity() // 2)
            keys = keys[: min(self.max_moves, room)]
            if len(keys):
                memory.promote(memory.ids[keys])
                moved["promoted"] = len(keys)
        # demote idle hot items that are not heavy
        hot = memory.keys_in(HOT)
        heavy_set = set(heavy_ids.tolist())
        idle = hot[(self.checks - self.last_hit_check[hot]) >= self.idle_checks]
        idle = np.array([k for k in idle.tolist() if int(memory.ids[k]) not in heavy_set], np.int64)
        idle = idle[np.argsort(self.last_hit_check[idle], kind="stable")][: self.max_moves]
        if len(idle):
            memory.demote(memory.ids[idle])
            moved["demoted"] = len(idle)
        memory.audit()  # budgets and placement invariants; raises when broken
        self.promotions += moved["promoted"]
        self.demotions += moved["demoted"]
        return moved

    # -- checkpoint state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        c = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
             for k, v in self.counter.state_dict().items()}
        return {"counter": c, "hits_seen": torch.from_numpy(self.hits_seen.copy()),
                "last_hit_check": torch.from_numpy(self.last_hit_check.copy()), "batches": self.batches,
                "checks": self.checks, "promotions": self.promotions, "demotions": self.demotions}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        c = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state_dict.get("counter", {}).items()}
        self.counter.load_state_dict(c)
        for name in ("hits_seen", "last_hit_check"):
            v = state_dict.get(name)
            setattr(self, name, np.asarray(v.numpy() if isinstance(v, torch.Tensor) else (v if v is not None else []),
                                           np.int64).copy())
        for name in ("batches", "checks", "promotions", "demotions"):
            setattr(self, name, int(state_dict.get(name, 0)))
