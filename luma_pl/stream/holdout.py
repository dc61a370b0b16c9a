"""A held-out slice of the anchor stream: pairs the bridge never learns from, for validation that
does not peek (early stopping, checkpoint selection, sweeps).

``holdout_mask(batch, by, fraction, after_ts)`` marks each event of a replay batch:

- ``hash``: the event's id (``event_ids``, BLAKE2b-64 of its key, uniform) falls in the first
  ``fraction`` of ``[0, HASH_BUCKETS)``: a random slice, the same on every rank, run and resume;
- ``topic``: the same test on the id of the event's topic string: whole topics held out (the
  bridge is validated on subjects it never saw);
- ``time``: the event's ``ts >= after_ts``: the future held out (the bridge is validated on what
  comes after its training data).

A held-out event's anchor pair is never learned from (``BridgeModuleBase.pairs``); its query is
the only kind validation asks (``validation_step``), against every item of the validation stream.
"""

from __future__ import annotations

import numpy as np
import torch

from luma_pl.stream.ids import event_ids

HOLDOUT_BY = ("none", "hash", "topic", "time")
HASH_BUCKETS = 1_000_003


def holdout_mask(batch: dict, by: str, fraction: float = 0.1, after_ts: int | None = None) -> torch.Tensor:
    """(B,) bool: which events of ``batch`` are held out (see the module docstring)."""
    n = len(batch.get("key", []))
    if by == "none" or n == 0:
        return torch.zeros(n, dtype=torch.bool)
    if by == "time":
        return torch.as_tensor(batch["ts"]).reshape(-1) >= int(after_ts)
    if by == "hash":
        ids = batch["id"].numpy() if isinstance(batch.get("id"), torch.Tensor) else event_ids(list(batch["key"]))
    elif by == "topic":
        ids = event_ids([str(t) for t in batch.get("topic", [""] * n)])
    else:
        raise ValueError(f"holdout_by={by!r}; use one of {HOLDOUT_BY}")
    return torch.from_numpy((np.asarray(ids, np.int64) % HASH_BUCKETS) < fraction * HASH_BUCKETS)
