"""The bridge between the admission pipeline and ``TieredMemory``'s pluggable ``AdmissionPolicy``.

``HeavyHitterPolicy`` is installed as ``memory.policy``. Before an insert the pipeline tells it,
per external id, the item's cluster label and whether that label is a heavy hitter (``expect``);
the memory then asks ``admit_hot`` (heavy -> hot, others -> warm). When a tier is full the memory
asks for victims, ranked most expendable first:

* hot -> warm demotion: label no longer tracked, then smallest label count, then least recently
  accessed, then oldest;
* warm eviction: fewest hits, then label not tracked, then smallest label count, then least
  recently accessed, then oldest.

The memory does every move and counts every demotion and eviction (``memory.counters``), so the
policy cannot lose an item. The policy's own state is the per-key label array (``state_dict``).
"""

from __future__ import annotations

import numpy as np

from luma_pl.admission.heavy_hitters import HeavyHitterCounter
from luma_pl.memory.policy import BUFFER, HOT, WARM


class HeavyHitterPolicy:
    def __init__(self, counter: HeavyHitterCounter):
        self.counter = counter
        # the next insert's announced items, sorted by external id: (ids, labels, goes hot)
        self._pending = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, bool))
        self.label_of_key = np.full(1024, -1, np.int64)  # (keys,) cluster label of each memory key

    def expect(self, ids: np.ndarray, labels: np.ndarray, heavy: np.ndarray) -> None:
        """Announce the next insert's items: external id -> (label, goes hot). Replaces any earlier
        announcement (an insert consumes one; a ShardedMemory keeps only part of it)."""
        ids = np.asarray(ids, np.int64)
        order = np.argsort(ids, kind="stable")
        self._pending = (ids[order], np.asarray(labels, np.int64)[order], np.asarray(heavy, bool)[order])

    def clear_pending(self) -> None:
        self._pending = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, bool))

    def _grow(self, n: int) -> None:
        if n > len(self.label_of_key):
            arr = np.full(max(n, 2 * len(self.label_of_key)), -1, np.int64)
            arr[: len(self.label_of_key)] = self.label_of_key
            self.label_of_key = arr

    # -- AdmissionPolicy ----------------------------------------------------------------------
    def admit_hot(self, memory, keys: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        self._grow(int(keys.max()) + 1 if len(keys) else 0)
        ids, labels, heavy = self._pending
        ext = memory.ids[keys]
        pos = np.minimum(np.searchsorted(ids, ext), max(len(ids) - 1, 0))
        known = (ids[pos] == ext) if len(ids) else np.zeros(len(keys), bool)
        # an item nobody announced: warm, no label
        self.label_of_key[keys] = np.where(known, labels[pos] if len(ids) else -1, -1)
        return known & (heavy[pos] if len(ids) else known)

    def _label_rank(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels = self.label_of_key[keys] if len(self.label_of_key) else np.full(len(keys), -1)
        return self.counter.tracked(labels), self.counter.count_of(labels)

    def hot_victims(self, memory, n: int) -> np.ndarray:
        keys = memory.keys_in(HOT)
        tracked, count = self._label_rank(keys)
        order = np.lexsort((keys, memory.last_access[keys], count, tracked))
        return keys[order[:n]]

    def warm_victims(self, memory, n: int) -> np.ndarray:
        keys = np.concatenate([memory.keys_in(WARM), memory.keys_in(BUFFER)])
        tracked, count = self._label_rank(keys)
        order = np.lexsort((keys, memory.last_access[keys], count, tracked, memory.hits[keys]))
        return keys[order[:n]]

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"label_of_key": self.label_of_key.copy()}

    def load_state_dict(self, state: dict) -> None:
        lab = state.get("label_of_key")
        if lab is not None:
            self.label_of_key = np.asarray(lab, np.int64).copy()
        self.clear_pending()
