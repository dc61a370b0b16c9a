"""Admission and migration policies: which tier a new item enters, which items leave a full tier.

A policy sees the memory through three read-only per-key arrays (``memory.hits``, ``memory.last_access``,
``memory.locations``; a key is an item's originals row) and returns decisions; the memory does the
moving, so a policy cannot break the bookkeeping. The streaming-admission issue plugs its own policy in.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

# re-exported: modules outside luma_pl.memory still import the location codes from here
from luma_pl.memory.tiers import BUFFER, EVICTED, HOT, REPLACED, TIER_NAMES, WARM, Tier

__all__ = ["BUFFER", "EVICTED", "HOT", "REPLACED", "TIER_NAMES", "WARM", "AdmissionPolicy", "HotTierView",
           "HotWhileRoom", "MemoryView", "NewestFirstLRU", "Tier"]


class HotTierView(Protocol):
    """What a policy reads of the hot tier."""

    def live_ids(self) -> np.ndarray:
        """Keys of the live hot items."""

    def __len__(self) -> int:
        """Live hot items."""


class MemoryView(Protocol):
    """The part of ``TieredMemory``'s public API a policy reads (policies never move items)."""

    hits: np.ndarray  # (keys,) int64 top-k appearances
    last_access: np.ndarray  # (keys,) int64 tick of insert or last hit
    locations: np.ndarray  # (keys,) int8 Tier code
    labels: np.ndarray  # (keys,) int64 the inserter's group label, -1 none
    hot: HotTierView

    def keys_in(self, location: int) -> np.ndarray:
        """Keys currently at ``location``, ascending."""

    def hot_capacity(self) -> int:
        """Most items an empty hot tier holds under both budgets."""


@runtime_checkable
class AdmissionPolicy(Protocol):
    def admit_hot(self, memory: MemoryView, keys: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """(n,) bool: True where a new item should enter hot (the memory spills the earliest in the
        batch to warm when hot cannot take them all)."""

    def hot_victims(self, memory: MemoryView, n: int) -> np.ndarray:
        """Up to n hot keys to demote to warm, most expendable first."""

    def warm_victims(self, memory: MemoryView, n: int) -> np.ndarray:
        """Up to n warm/buffer keys to evict, most expendable first."""


class NewestFirstLRU:
    """New items go hot; least-recently-accessed hot items are demoted; warm evicts least-accessed,
    then least-recently-accessed, then oldest."""

    def admit_hot(self, memory: MemoryView, keys: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        return np.ones(len(keys), dtype=bool)

    def hot_victims(self, memory: MemoryView, n: int) -> np.ndarray:
        # oldest access first, then oldest key; O(hot) per call (argpartition, no full sort), and the
        # hot keys come from the hot tier itself, not from a scan of every key ever admitted
        keys = memory.hot.live_ids()
        if n <= 0 or len(keys) == 0:
            return keys[:0]
        order_key = (memory.last_access[keys] << 32) | keys  # ticks and keys < 2**31
        if n < len(keys):
            part = np.argpartition(order_key, n - 1)[:n]
            keys, order_key = keys[part], order_key[part]
        return keys[np.argsort(order_key, kind="stable")[:n]]

    def warm_victims(self, memory: MemoryView, n: int) -> np.ndarray:
        # fewest hits, then oldest access, then oldest key. Without sorting the whole tier (a full
        # lexsort of 1M warm keys per eviction call costs ~0.3 s): every key with fewer hits than
        # the n-th smallest count is taken, the rest come from the keys at that count by partition.
        keys = np.concatenate([memory.keys_in(WARM), memory.keys_in(BUFFER)])
        if n <= 0 or len(keys) == 0:
            return keys[:0]
        hits = memory.hits[keys]
        if n >= len(keys) // 4:
            return keys[np.lexsort((keys, memory.last_access[keys], hits))[:n]]
        h = np.partition(hits, n - 1)[n - 1]
        below = keys[hits < h]
        below = below[np.lexsort((below, memory.last_access[below], memory.hits[below]))]
        at = keys[hits == h]
        need = n - len(below)
        order_key = (memory.last_access[at] << 32) | at  # ticks and keys < 2**31
        if need < len(at):
            part = np.argpartition(order_key, need - 1)[:need]
            at, order_key = at[part], order_key[part]
        return np.concatenate([below, at[np.argsort(order_key, kind="stable")[:need]]])


class HotWhileRoom(NewestFirstLRU):
    """Streaming-friendly admission: a new item goes hot only while the hot tier has free room (the
    newest of a batch first); once hot is full, new items go warm and reach hot only by promotion
    (``promote`` / ``migrate``, e.g. ``MemoryConfig.migrate_every_n_searches``). Unlike NewestFirstLRU,
    a stream does not push every item through the hot graph (one HNSW insert, a share of a tombstone
    rebuild and a demotion per item), so ingest costs what the final tier of each item costs."""

    def admit_hot(self, memory: MemoryView, keys: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        room = max(0, memory.hot_capacity() - len(memory.hot))
        take = np.zeros(len(keys), dtype=bool)
        if room:
            take[-room:] = True
        return take
