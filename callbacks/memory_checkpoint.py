"""Lightning callback that stores a TieredMemory's state in every checkpoint and restores it.

The state is tensors and primitives (``luma_pl.memory.state_dict`` as tensors), so checkpoints load with
``torch.load(..., weights_only=True)``. A checkpoint written without memory state (an older run)
restores nothing and leaves the current memory as it is.

Under DDP each rank holds its own shard, but Lightning writes rank 0's checkpoint dict only. So
with more than one rank every rank packs its shard (``np.savez``: arrays only, read back with
``allow_pickle=False``) into a uint8 tensor, the buffers are all-gathered (``on_save_checkpoint``
runs on every rank), and the checkpoint holds ``{"world": W, "shards": [W tensors]}``. On load
rank r restores shard r; a run with a different world size is refused (ids are placed by
``hash % W``, so the shards would not match their owners).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from luma_pl.memory import TieredMemory, from_state_dict, state_dict
from luma_pl.memory.sharded import allgather_bytes
from luma_pl.ranks import rank_and_world, world_size

STATE_KEY = "luma_memory"
_META_KEY = "__meta_json__"


def _pack(state: dict) -> np.ndarray:
    """A memory state (arrays + JSON meta) as one uint8 buffer in npz format (no pickled object)."""
    buf = io.BytesIO()
    meta = np.frombuffer(state["meta"].encode(), np.uint8)
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in state["arrays"].items()}, **{_META_KEY: meta})
    return np.frombuffer(buf.getvalue(), np.uint8)


def _unpack(blob) -> dict:
    data = blob.numpy() if isinstance(blob, torch.Tensor) else np.asarray(blob, np.uint8)
    with np.load(io.BytesIO(data.tobytes()), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != _META_KEY}
        meta = z[_META_KEY].tobytes().decode()
    return {"arrays": arrays, "meta": meta}


class MemoryCheckpoint(pl.Callback):
    """``memory``: the TieredMemory to save, or None (the default, for YAML configs) to save
    ``pl_module.memory`` (its local shard under DDP: every rank writes its own shard into its
    checkpoint state). ``on_restore(memory)`` receives the restored one; the callback's ``memory``
    attribute, and ``pl_module.memory`` when that is where it came from, are replaced too."""

    def __init__(self, memory: TieredMemory | None = None,
                 on_restore: Callable[[TieredMemory], None] | None = None):
        self.memory = memory
        self.on_restore = on_restore

    def _current(self, pl_module: pl.LightningModule) -> TieredMemory | None:
        if self.memory is not None:
            return self.memory
        found = getattr(pl_module, "memory", None)
        return None if found is None else found.shard

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        memory = self._current(pl_module)
        if memory is None:
            return
        state = state_dict(memory)
        if world_size() > 1:
            shards = allgather_bytes(_pack(state))
            checkpoint[STATE_KEY] = {"world": len(shards), "shards": [torch.from_numpy(b) for b in shards]}
            return
        # tensors, not numpy arrays: torch.load(weights_only=True) accepts them without allow-lists
        checkpoint[STATE_KEY] = {"arrays": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state["arrays"].items()},
                                 "meta": state["meta"]}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(STATE_KEY)
        if state is None:
            return
        if "shards" in state:
            rank, world = rank_and_world()
            if int(state.get("world", len(state["shards"]))) != world:
                raise ValueError(f"the checkpoint holds {len(state['shards'])} memory shards (one per rank of the run "
                                 f"that wrote it) but this run has world size {world}; resume with "
                                 f"{len(state['shards'])} ranks (ids are placed by hash % world size)")
            restored = from_state_dict(_unpack(state["shards"][rank]))
        else:
            arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in state["arrays"].items()}
            restored = from_state_dict({"arrays": arrays, "meta": state["meta"]})
        current = self._current(pl_module)
        if current is not None:
            current.close()
        if self.memory is None:  # the module's memory: put the restored one in its place
            holder = getattr(pl_module, "memory", None)
            if holder is not None and holder.distributed:
                holder.shard = restored
            else:
                pl_module.memory = restored
        else:
            self.memory = restored
        if self.on_restore is not None:
            self.on_restore(restored)
