"""HitMigration: promote what the stream asks for, demote what it stopped asking for (the state
``callbacks/tier_migration.py`` schedules and logs; one object owns it).

One ``check(memory)`` pass over a ``TieredMemory``:

1. the hits the memory recorded since the last check (``memory.hits`` minus a snapshot) are fed,
   weighted, into a Space-Saving counter over item ids (capacity ``capacity``);
2. under DDP the per-rank summaries are all-gathered and merged (pruned to the capacity), so every
   rank sees the same heavy set (the counter then continues from it): ``check`` is a collective;
3. heavy ids (count >= ``promote_min_count``) that are warm here are promoted, at most
   ``max_moves`` per check and never more than half the hot tier's capacity;
4. hot ids that are not heavy and had no hit for ``idle_checks`` checks are demoted (``max_moves``);
5. ``memory.audit()`` must pass (it raises naming the broken invariant).

There is one rule (this ``check``) and two schedulers, never both on one memory:

* the memory itself: ``TieredMemory`` owns a ``HitMigration`` (``memory.migration``, built from
  ``MemoryConfig.promote_min_hits`` / ``migrate_capacity`` / ``migrate_idle_checks`` /
  ``migrate_max_moves``, not a collective) and runs one check every ``migrate_every_n_searches``
  recorded searches, or when ``memory.migrate()`` is called; its state is saved with the memory;
* ``callbacks/tier_migration.py`` (through the stream runtime), with its own ``HitMigration``: a
  memory with ``migrate_every_n_searches > 0`` schedules itself, and ``check`` refuses any
  ``HitMigration`` but the memory's own on it, since two schedulers would fight over the hot tier.

State (``state_dict``) is numpy arrays and ints.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from luma_pl.admission.heavy_hitters import CounterConfig, HeavyHitterCounter, space_saving_merge
from luma_pl.configuration import StrictConfig, require
from luma_pl.memory.tiers import BUFFER, HOT, WARM


@dataclasses.dataclass
class MigrationConfig(StrictConfig):
    """The ``TierMigration`` callback's schedule and ``HitMigration`` settings (the top-level
    ``migration`` group of train.py and evaluate.py)."""

    every_n_batches: int = 50
    """One migration check every this many replayed batches."""
    capacity: int = 256
    """Ids the hit counter tracks (Space-Saving summary)."""
    promote_min_count: int = 2
    """Counted hits that make a warm item heavy (promoted)."""
    idle_checks: int = 2
    """Checks without a hit after which a hot item that is not heavy is demoted."""
    max_moves: int = 64
    """Most promotions, and most demotions, per check."""

    def validate(self) -> None:
        for name, low in (("every_n_batches", 1), ("capacity", 1), ("promote_min_count", 1), ("idle_checks", 1),
                          ("max_moves", 0)):
            v = getattr(self, name)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= low, "MigrationConfig", name, v,
                    f"use an int >= {low}")


class HitMigration:
    def __init__(self, capacity: int = 256, promote_min_count: int = 2, idle_checks: int = 2, max_moves: int = 64,
                 collective: bool = True):
        """``collective``: all-gather the counter over DDP ranks at each check (the callback, which
        runs a check on every rank at the same batch). A memory's own ``HitMigration`` passes False:
        its checks run inside ``search`` on each rank's shard, so the count of checks per rank need
        not agree and a collective there could hang; it merges only its own summary."""
        if not isinstance(collective, bool):
            raise ValueError(f"TierMigration collective={collective!r} is invalid; use True or False")
        self.collective = collective
        for name, value, low in (("capacity", capacity, 1), ("promote_min_count", promote_min_count, 1),
                                 ("idle_checks", idle_checks, 1), ("max_moves", max_moves, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"TierMigration {name}={value!r} is invalid; use an int >= {low}")
        self.capacity = capacity
        self.promote_min_count = promote_min_count
        self.idle_checks = idle_checks
        self.max_moves = max_moves
        self.counter = HeavyHitterCounter(CounterConfig(policy="space_saving", capacity=capacity))
        self.hits_seen = np.zeros(0, np.int64)  # (keys,) memory.hits at the last check
        self.last_hit_check = np.zeros(0, np.int64)  # (keys,) check index of each key's last hit
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

    def check(self, memory) -> dict[str, int]:
        """One migration pass over a TieredMemory (a collective under DDP); returns the moves made."""
        every = memory.cfg.migrate_every_n_searches
        if every > 0 and getattr(memory, "migration", None) is not self:
            raise ValueError(f"TierMigration: the memory migrates itself every {every} searches "
                             f"(memory migrate_every_n_searches={every} > 0) with its own HitMigration; two "
                             "schedulers would fight over the hot tier: set memory.migrate_every_n_searches=0 "
                             "or remove the TierMigration callback")
        self.checks += 1
        n = memory.num_keys
        self._grow(n)
        delta = memory.hits[:n] - self.hits_seen[:n]
        hit_keys = np.flatnonzero(delta > 0)
        self.hits_seen[:n] = memory.hits[:n]
        self.last_hit_check[hit_keys] = self.checks
        if len(hit_keys):
            self.counter.update(memory.ids[hit_keys], delta[hit_keys])
        if self.collective:
            from luma_pl.admission.distributed import allgather_space_saving  # torch.distributed, only here

            labs, cnt, err = allgather_space_saving(*self.counter.summary(), self.capacity)
        else:
            labs, cnt, err = space_saving_merge([self.counter.summary()], self.capacity)
        self.counter.load_summary(labs, cnt, err)
        heavy_ids = labs[cnt >= self.promote_min_count]  # most counted first
        moved = {"promoted": 0, "demoted": 0}
        # promote heavy warm items (their exact originals go hot)
        keys = memory.key_of.lookup(heavy_ids)
        keys = keys[keys >= 0]
        if len(keys):
            keys = keys[np.isin(memory.locations[keys], (WARM, BUFFER))]
            cap = memory.hot_capacity()
            room = max(1, cap // 2) if cap else 0  # half the hot tier per check (1 when it holds 1)
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

    def state_dict(self) -> dict[str, Any]:
        return {"counter": self.counter.state_dict(), "hits_seen": self.hits_seen.copy(),
                "last_hit_check": self.last_hit_check.copy(), "checks": self.checks,
                "promotions": self.promotions, "demotions": self.demotions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counter.load_state_dict(dict(state.get("counter", {})))
        for name in ("hits_seen", "last_hit_check"):
            v = state.get(name)
            setattr(self, name, np.asarray(v if v is not None else [], np.int64).copy())
        for name in ("checks", "promotions", "demotions"):
            setattr(self, name, int(state.get(name, 0)))
