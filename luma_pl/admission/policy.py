"""The bridge between the admission pipeline and ``TieredMemory``'s pluggable ``AdmissionPolicy``.

``HeavyHitterPolicy`` is installed as ``memory.policy``. Before an insert the pipeline tells it,
per external id, the item's cluster label and whether that label is a heavy hitter (``expect``);
the memory then asks ``admit_hot`` (heavy -> hot, others -> warm). When a tier is full the memory
asks for victims, ranked most expendable first. Two rankings (``victims``):

* ``quota`` (default): each tracked label's share of the tier's item budget is proportional to its
  count (untracked labels get none). An item that is the j-th most recently accessed of its label
  exceeds its label's quota by j - quota; the largest excess goes first, then (warm) fewest hits,
  then least recently accessed, then oldest. A heavy topic keeps its newest items, a light one a
  few, an untracked one none, so the budget holds a frequency-weighted, recent sample of topics.
* ``label_count``: whole labels in order: not tracked first, then smallest count, then least
  recently accessed, then oldest (warm: fewest hits before all that). A topic with a large count
  keeps every old item while a smaller one loses all of its items; on a stream where popular
  topics repeat (``bench/admission_ablation.py --popularity zipf``) this loses 0.15 Recall@10 to
  ``quota``, on the uniform demo stream the two are within 0.01.

The memory does every move and counts every demotion and eviction (``memory.counters``), so the
policy cannot lose an item. The policy's own state is the per-key label array (``state_dict``).
"""

from __future__ import annotations

import numpy as np

from luma_pl.admission.heavy_hitters import HeavyHitterCounter
from luma_pl.memory.policy import BUFFER, HOT, WARM

VICTIM_RANKINGS = ("quota", "label_count")


class HeavyHitterPolicy:
    def __init__(self, counter: HeavyHitterCounter, victims: str = "quota"):
        if victims not in VICTIM_RANKINGS:
            raise ValueError(f"victims={victims!r} is invalid; use one of {VICTIM_RANKINGS}")
        self.counter = counter
        self.victims = victims
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

    def _quota_excess(self, memory, keys: np.ndarray, budget: int) -> np.ndarray:
        """(n,) how far each key lies beyond its label's share of ``budget`` (see the module doc)."""
        tracked, count = self._label_rank(keys)
        labels = self.label_of_key[keys]
        _, inv = np.unique(labels, return_inverse=True)  # (n,) label slot of each key
        per_label = np.zeros(int(inv.max()) + 1 if len(inv) else 0)
        np.maximum.at(per_label, inv, np.where(tracked, count, 0).astype(np.float64))
        quota = budget * per_label / max(per_label.sum(), 1.0)
        # j = rank of the key within its label, most recently accessed first (ties: newest key)
        order = np.lexsort((-keys, -memory.last_access[keys], inv))
        starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
        sizes = np.diff(np.r_[starts, len(keys)])
        j = np.empty(len(keys))
        j[order] = np.arange(len(keys)) - np.repeat(starts, sizes) + 1
        return j - quota[inv]

    def hot_victims(self, memory, n: int) -> np.ndarray:
        keys = memory.keys_in(HOT)
        if self.victims == "quota":
            excess = self._quota_excess(memory, keys, memory.cfg.hot_max_items)
            order = np.lexsort((keys, memory.last_access[keys], -excess))
        else:
            tracked, count = self._label_rank(keys)
            order = np.lexsort((keys, memory.last_access[keys], count, tracked))
        return keys[order[:n]]

    def warm_victims(self, memory, n: int) -> np.ndarray:
        keys = np.concatenate([memory.keys_in(WARM), memory.keys_in(BUFFER)])
        if self.victims == "quota":
            excess = self._quota_excess(memory, keys, memory.cfg.warm_max_items)
            order = np.lexsort((keys, memory.last_access[keys], memory.hits[keys], -excess))
        else:
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
