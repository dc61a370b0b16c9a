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
        self._pending: dict[int, tuple[int, bool]] = {}
        self.label_of_key = np.full(1024, -1, np.int64)  # (keys,) cluster label of each memory key

    def expect(self, ids: np.ndarray, labels: np.ndarray, heavy: np.ndarray) -> None:
        """Announce the next insert's items: external id -> (label, goes hot)."""
        self._pending.update(zip(np.asarray(ids, np.int64).tolist(),
                                 zip(np.asarray(labels, np.int64).tolist(), np.asarray(heavy, bool).tolist(),
                                     strict=True), strict=True))

    def _grow(self, n: int) -> None:
        if n > len(self.label_of_key):
            arr = np.full(max(n, 2 * len(self.label_of_key)), -1, np.int64)
            arr[: len(self.label_of_key)] = self.label_of_key
            self.label_of_key = arr

    # -- AdmissionPolicy ----------------------------------------------------------------------
    def admit_hot(self, memory, keys: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        self._grow(int(keys.max()) + 1 if len(keys) else 0)
        hot = np.zeros(len(keys), bool)
        pop = self._pending.pop
        for j, (key, ext) in enumerate(zip(keys.tolist(), memory.ids[keys].tolist(), strict=True)):
            label, h = pop(ext, (-1, False))  # an item nobody announced: warm, no label
            self.label_of_key[key] = label
            hot[j] = h
        return hot

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
        self._pending.clear()
