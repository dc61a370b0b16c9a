"""Tiered memory: hot exact tier, warm PQ tier, on-disk originals, budgets, persistence, sharding."""

from luma_pl.memory.config import MemoryConfig
from luma_pl.memory.hot import HotTier, gpu_available
from luma_pl.memory.originals import OriginalsStore
from luma_pl.memory.persistence import from_state_dict, load, save, state_dict
from luma_pl.memory.policy import BUFFER, EVICTED, HOT, WARM, AdmissionPolicy, HotWhileRoom, NewestFirstLRU
from luma_pl.memory.tiered import SearchResult, TieredMemory
from luma_pl.memory.warm import WarmTier

__all__ = [
    "BUFFER", "EVICTED", "HOT", "WARM", "AdmissionPolicy", "HotTier", "HotWhileRoom", "MemoryConfig", "NewestFirstLRU",
    "OriginalsStore", "SearchResult", "TieredMemory", "WarmTier", "from_state_dict", "gpu_available",
    "load", "save", "state_dict",
]
