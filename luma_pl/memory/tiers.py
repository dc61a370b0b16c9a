"""Location codes of the tiered memory: where one key (an originals row) is.

``Tier`` is an ``IntEnum``, so its members are ints: per-key location arrays stay ``np.int8``,
``locations == HOT`` compares element-wise, and anything serialised (state_dict arrays, meta.json,
snapshots) holds plain ints 0..4, as before the enum existed. This module imports nothing of the
memory, so every other module of ``luma_pl.memory`` can import it without an import circle.
"""

from __future__ import annotations

import enum


class Tier(enum.IntEnum):
    HOT = 0
    """In the hot tier: exact vector in the HNSW/flat index, searched exactly."""
    WARM = 1
    """In the warm tier's trained IVFPQ index: PQ code, rescored exactly from the originals."""
    BUFFER = 2
    """In the warm tier's exact pre-training buffer (the IVFPQ is not trained yet)."""
    EVICTED = 3
    """Dropped by a budget or ``evict``; the id stays known (an upsert brings it back)."""
    REPLACED = 4
    """The old row of an upserted id, or a key in transit: not an item any more."""


HOT = Tier.HOT
WARM = Tier.WARM
BUFFER = Tier.BUFFER
EVICTED = Tier.EVICTED
REPLACED = Tier.REPLACED

TIER_NAMES: dict[int, str] = {HOT: "hot", WARM: "warm", BUFFER: "buffer", EVICTED: "evicted"}
"""Name of each location an item can be at (REPLACED is none: it is not an item)."""
