"""The bridge between the admission pipeline and ``TieredMemory``'s pluggable ``AdmissionPolicy``.

``HeavyHitterPolicy`` is installed as ``memory.policy``; it only ranks victims. The admission
decision is an argument of the insert: the pipeline passes ``hot`` (heavy -> hot, others -> warm)
and each item's cluster ``labels``, which the memory keeps per key (``memory.labels``). When a tier
is full the memory asks for victims, ranked most expendable first. Two rankings (``victims``):

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
policy cannot lose an item. The policy holds no state of its own: the labels are the memory's, saved with it.
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

    # -- AdmissionPolicy ----------------------------------------------------------------------
    def admit_hot(self, memory, keys: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """An insert without the pipeline's decision (no ``hot`` mask): warm."""
        return np.zeros(len(keys), bool)

    def _label_rank(self, memory, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tracked (n,) bool, count (n,) int64) of each key's label, by dense table lookups (cluster
        labels are small ints; a per-key dict lookup cost ~0.5 s per million keys)."""
        labels = memory.labels[keys]
        labs, cnt, _ = self.counter.summary()
        size = 2 + max(int(labels.max()) if len(labels) else 0, int(labs.max()) if len(labs) else 0)
        count = np.zeros(size, np.int64)
        count[labs + 1] = cnt  # slot 0 is label -1 (no label)
        tracked = np.zeros(size, bool)
        tracked[labs + 1] = True
        return tracked[labels + 1], count[labels + 1]

    def _quota(self, memory, keys: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(slot (n,) per key, held (slots,), quota (slots,)): slot = label + 1; a tracked label's
        quota is its count's share of ``budget`` among the labels held here, an untracked one's 0."""
        tracked, count = self._label_rank(memory, keys)
        slot = memory.labels[keys] + 1
        held = np.bincount(slot)
        weight = np.zeros(len(held))
        weight[slot] = np.where(tracked, count, 0)
        return slot, held, budget * weight / max(weight.sum(), 1.0)

    @staticmethod
    def _ranks_within(slot: np.ndarray, keys: np.ndarray, last_access: np.ndarray) -> np.ndarray:
        """(n,) j: 1 + how many keys of the same slot were accessed more recently (ties: newer key)."""
        order = np.lexsort((-keys, -last_access, slot))
        starts = np.flatnonzero(np.r_[True, np.diff(slot[order]) != 0])
        sizes = np.diff(np.r_[starts, len(keys)])
        j = np.empty(len(keys))
        j[order] = np.arange(len(keys)) - np.repeat(starts, sizes) + 1
        return j

    def _quota_excess(self, memory, keys: np.ndarray, budget: int) -> np.ndarray:
        """(n,) how far each key lies beyond its label's share of ``budget`` (see the module doc)."""
        slot, _, quota = self._quota(memory, keys, budget)
        return self._ranks_within(slot, keys, memory.last_access[keys]) - quota[slot]

    def _quota_victims(self, memory, keys: np.ndarray, budget: int, n: int, warm: bool) -> np.ndarray:
        """The n first keys in quota order, without sorting the whole tier: a label's excess values
        are known from its size and quota alone (c - q, c - 1 - q, ...), which gives the n-th largest
        excess τ; only the keys of labels that reach τ are ranked. Same result as the full sort."""
        def rank(sub: np.ndarray, excess: np.ndarray) -> np.ndarray:
            la = memory.last_access[sub]
            order = (np.lexsort((sub, la, memory.hits[sub], -excess)) if warm else np.lexsort((sub, la, -excess)))
            return sub[order[:n]]

        if n >= len(keys) // 4:  # a large share: the full sort is as cheap
            return rank(keys, self._quota_excess(memory, keys, budget))
        slot, held, quota = self._quota(memory, keys, budget)
        live = np.flatnonzero(held)
        top = np.minimum(held[live], n)  # each label's n largest excess values: held - q - (0..top-1)
        values = np.repeat(held[live] - quota[live], top) - (np.arange(top.sum()) - np.repeat(np.cumsum(top) - top, top))
        tau = np.partition(values, len(values) - n)[len(values) - n]  # the n-th largest excess
        reach = np.zeros(len(held), bool)
        reach[live[held[live] - quota[live] >= tau - 1e-9]] = True
        in_reach = reach[slot]
        sub, sub_slot = keys[in_reach], slot[in_reach]
        excess = self._ranks_within(sub_slot, sub, memory.last_access[sub]) - quota[sub_slot]
        keep = excess >= tau - 1e-9
        return rank(sub[keep], excess[keep])

    def hot_victims(self, memory, n: int) -> np.ndarray:
        keys = memory.keys_in(HOT)
        if self.victims == "quota":
            return self._quota_victims(memory, keys, memory.cfg.hot_max_items, n, warm=False)
        tracked, count = self._label_rank(memory, keys)
        order = np.lexsort((keys, memory.last_access[keys], count, tracked))
        return keys[order[:n]]

    def warm_victims(self, memory, n: int) -> np.ndarray:
        keys = np.concatenate([memory.keys_in(WARM), memory.keys_in(BUFFER)])
        if self.victims == "quota":
            return self._quota_victims(memory, keys, memory.cfg.warm_max_items, n, warm=True)
        tracked, count = self._label_rank(memory, keys)
        order = np.lexsort((keys, memory.last_access[keys], count, tracked, memory.hits[keys]))
        return keys[order[:n]]

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Nothing: the per-key labels live in the memory (older checkpoints' ``label_of_key`` is ignored)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
