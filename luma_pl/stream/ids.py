"""One id per event, the same in training and evaluation, on every rank, machine and run.

``id = BLAKE2b-64(utf-8 key, little-endian) & (2**62 - 1)``: a non-negative int64 with two bits of
head-room (faiss and numpy never see a negative or overflowing id), independent of
``PYTHONHASHSEED``, the process, the platform and the order of events. Collisions between two
distinct keys happen with probability about n² / 2**63 (n = 1e8 events: ~1e-3); the memory refuses a
colliding insert as a duplicate id, so a collision is counted, never silently merged.

The replay (``data_modules.stream_replay``) computes ``batch["id"]`` once per batch; a batch built
by hand without it gets the same ids from ``batch_ids``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

ID_BITS = 62
_MASK = (1 << ID_BITS) - 1


def event_ids(keys: list[str]) -> np.ndarray:
    """(B,) int64 ids of the event keys ``keys`` (see the module docstring for the definition)."""
    out = np.empty(len(keys), np.int64)
    for i, k in enumerate(keys):
        if not isinstance(k, str):
            raise TypeError(f"event_ids: keys[{i}]={k!r} is a {type(k).__name__}; event keys are str "
                            "(the sample's __key__)")
        out[i] = int.from_bytes(hashlib.blake2b(k.encode("utf-8"), digest_size=8).digest(), "little") & _MASK
    return out


def batch_ids(batch: dict) -> np.ndarray:
    """(B,) int64 ids of a replay batch: ``batch["id"]`` when the replay set it, else computed from
    ``batch["key"]`` with the same function."""
    ids = batch.get("id")
    if ids is None:
        return event_ids(list(batch.get("key", [])))
    return ids.cpu().numpy().astype(np.int64) if isinstance(ids, torch.Tensor) else np.asarray(ids, np.int64)
