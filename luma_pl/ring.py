"""``write_rows``: the one FIFO of rows the project keeps in a preallocated tensor (the prequential
gallery, the learned bridge's negative queue, the evaluator's CSLS anchor bank)."""

from __future__ import annotations

import torch


def write_rows(ring: torch.Tensor, pos: int, filled: int, rows: torch.Tensor) -> tuple[int, int]:
    """Write ``rows`` into ``ring`` (capacity, d) in place from row ``pos`` on, wrapping round, the
    oldest overwritten first (more rows than the capacity: only the last ones are kept). Returns the
    new ``(pos, filled)``."""
    capacity = ring.shape[0]
    rows = rows.detach()[-capacity:] if capacity else rows[:0]
    if not len(rows):
        return pos, filled
    idx = (pos + torch.arange(len(rows))) % capacity
    ring[idx.to(ring.device)] = rows.to(device=ring.device, dtype=ring.dtype)
    return (pos + len(rows)) % capacity, min(filled + len(rows), capacity)
