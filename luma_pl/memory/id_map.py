"""IdMap: external id -> current key, in 16 bytes per id instead of a dict's ~124.

The memory remembers every id it ever admitted (evicted ones too: a repeat is recognised and its
counters kept), so this map grows with the stream. A Python dict costs ~124 B per entry (a hash
slot share plus two int objects): at 1M events that alone was +124 MB, the bulk of the 1M-event
soak's RSS growth (bench/results/soak_evaluate.md).

Layout (a two-level log-structured map): a *main* run of sorted ``ids`` with their ``keys``
(int64 each, 16 B per id), plus a small *pending* dict of recent assignments. ``lookup`` searches
the main run with one vectorised ``searchsorted`` and then lets pending entries override.
``assign`` writes into pending; once pending holds more than ``max(MIN_PENDING, len(main) / 16)``
entries it is merged into the main run (one sort of the new ids, one merge). Proof of cost: a merge
costs O(n + p log p) for p pending entries and happens after at least n/16 assignments, so each
assignment pays O(16 + log p) amortised; pending never holds more than n/16 + MIN_PENDING entries,
so the dict's share of memory stays below 124/16 ~ 8 B per id.

Semantics: a mapping from int ids to int keys with no deletion (the memory never forgets an id; an
upsert re-assigns it). ``__getitem__``/``get``/``in``/``len``/iteration/``items`` behave like the
dict this replaces, so callers and tests read it as one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

MIN_PENDING = 4096


class IdMap:
    """id -> key, sorted arrays plus a bounded dict of recent assignments (see the module docstring)."""

    def __init__(self) -> None:
        self._ids = np.empty(0, np.int64)  # sorted, unique
        self._keys = np.empty(0, np.int64)
        self._pending: dict[int, int] = {}

    @classmethod
    def from_arrays(cls, ids: np.ndarray, keys: np.ndarray) -> IdMap:
        """A map of ``ids[i] -> keys[i]``; ids must be unique (a ValueError names a repeat)."""
        out = cls()
        ids, keys = np.asarray(ids, np.int64).reshape(-1), np.asarray(keys, np.int64).reshape(-1)
        if ids.shape != keys.shape:
            raise ValueError(f"ids has {len(ids)} entries and keys {len(keys)}; pass one key per id")
        order = np.argsort(ids, kind="stable")
        out._ids, out._keys = ids[order], keys[order]
        if len(ids) > 1 and bool((out._ids[1:] == out._ids[:-1]).any()):
            j = int(np.flatnonzero(out._ids[1:] == out._ids[:-1])[0])
            raise ValueError(f"id {int(out._ids[j])} appears twice; an id maps to one key")
        return out

    # --- vectorised API -----------------------------------------------------------------------
    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """(n,) key of each id, -1 where the id is not in the map."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        out = self.lookup_main(ids)
        if self._pending and len(ids):
            get = self._pending.get
            over = np.fromiter((get(i, -2) for i in ids.tolist()), np.int64, count=len(ids))
            mask = over != -2
            out[mask] = over[mask]
        return out

    def assign(self, ids: np.ndarray, keys: np.ndarray) -> None:
        """Set ``ids[i] -> keys[i]`` (a later entry of a repeated id wins, as dict.update)."""
        ids, keys = np.asarray(ids, np.int64).reshape(-1), np.asarray(keys, np.int64).reshape(-1)
        self._pending.update(zip(ids.tolist(), keys.tolist(), strict=True))
        if len(self._pending) > max(MIN_PENDING, len(self._ids) // 16):
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        p_ids = np.fromiter(self._pending.keys(), np.int64, count=len(self._pending))
        p_keys = np.fromiter(self._pending.values(), np.int64, count=len(self._pending))
        self._pending = {}
        if len(self._ids):
            pos = np.searchsorted(self._ids, p_ids).clip(max=len(self._ids) - 1)
            known = self._ids[pos] == p_ids
            self._keys[pos[known]] = p_keys[known]  # re-assigned ids: in place
            p_ids, p_keys = p_ids[~known], p_keys[~known]
        if len(p_ids):
            ids = np.concatenate([self._ids, p_ids])
            keys = np.concatenate([self._keys, p_keys])
            order = np.argsort(ids, kind="stable")
            self._ids, self._keys = ids[order], keys[order]

    @property
    def nbytes(self) -> int:
        """RAM held: the arrays plus an upper bound of the pending dict (~124 B per entry)."""
        return int(self._ids.nbytes + self._keys.nbytes + 124 * len(self._pending))

    # --- the dict-like surface it replaces ------------------------------------------------------
    def __len__(self) -> int:
        if not self._pending:
            return len(self._ids)
        p = np.fromiter(self._pending.keys(), np.int64, count=len(self._pending))
        return len(self._ids) + int((self.lookup_main(p) < 0).sum())

    def lookup_main(self, ids: np.ndarray) -> np.ndarray:
        """Keys from the main run only (-1 where absent there)."""
        out = np.full(len(ids), -1, np.int64)
        if len(self._ids) and len(ids):
            pos = np.searchsorted(self._ids, ids).clip(max=len(self._ids) - 1)
            hit = self._ids[pos] == ids
            out[hit] = self._keys[pos[hit]]
        return out

    def get(self, item_id, default=None):
        key = int(self.lookup(np.array([int(item_id)]))[0])
        return default if key < 0 else key

    def __getitem__(self, item_id) -> int:
        key = self.get(item_id)
        if key is None:
            raise KeyError(item_id)
        return key

    def __contains__(self, item_id) -> bool:
        return self.get(item_id) is not None

    def items(self) -> Iterator[tuple[int, int]]:
        self._merge()
        return zip(self._ids.tolist(), self._keys.tolist(), strict=True)

    def __iter__(self) -> Iterator[int]:
        self._merge()
        return iter(self._ids.tolist())

    def update(self, pairs: Iterable[tuple[int, int]]) -> None:
        """dict.update over ``(id, key)`` pairs."""
        pairs = list(pairs)
        if pairs:
            ids, keys = zip(*pairs, strict=True)
            self.assign(np.array(ids, np.int64), np.array(keys, np.int64))
