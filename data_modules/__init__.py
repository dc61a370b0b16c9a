"""WebDataset shard writing, safe reading and stream replay (see docs/architecture.md).

Public API:
- ``ShardSetWriter``, ``write_blocks``: write event/block shards and ``manifest.json``
- ``Manifest``, ``load_manifest``, ``scan_manifest``: what a shard set holds
- ``ReaderConfig``, ``iter_chunks``, ``iter_raw_samples``: the safe reader
- ``plan_replay``: the deterministic per-rank/per-worker batch plan
- ``StreamReplayDataset``, ``StreamReplayDataModule``, ``ReplayConfig``: the replay
"""

from .replay_plan import ReplayPlan, plan_replay
from .shard_format import Manifest, ShardInfo, load_manifest, scan_manifest, write_manifest
from .shard_reader import EventChunk, ReaderConfig, Skip, iter_chunks, iter_raw_samples
from .shard_writer import ShardSetWriter, write_blocks
from .stream_replay import ReplayConfig, StreamReplayDataModule, StreamReplayDataset, replay_dataloader

__all__ = [
    "EventChunk", "Manifest", "ReaderConfig", "ReplayConfig", "ReplayPlan", "ShardInfo", "ShardSetWriter",
    "Skip", "StreamReplayDataModule", "StreamReplayDataset", "iter_chunks", "iter_raw_samples",
    "load_manifest", "plan_replay", "replay_dataloader", "scan_manifest", "write_blocks", "write_manifest",
]
