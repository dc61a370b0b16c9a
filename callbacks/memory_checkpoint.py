"""Lightning callback that stores a TieredMemory's state in every checkpoint and restores it.

The state is tensors and primitives (``luma_pl.memory.state_dict`` as tensors), so checkpoints load with
``torch.load(..., weights_only=True)``. A checkpoint written without memory state (an older run)
restores nothing and leaves the current memory as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from luma_pl.memory import TieredMemory, from_state_dict, state_dict

STATE_KEY = "luma_memory"


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
        return getattr(found, "local", found)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        memory = self._current(pl_module)
        if memory is None:
            return
        state = state_dict(memory)
        # tensors, not numpy arrays: torch.load(weights_only=True) accepts them without allow-lists
        checkpoint[STATE_KEY] = {"arrays": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state["arrays"].items()},
                                 "meta": state["meta"]}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(STATE_KEY)
        if state is None:
            return
        arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in state["arrays"].items()}
        restored = from_state_dict({"arrays": arrays, "meta": state["meta"]})
        current = self._current(pl_module)
        if current is not None:
            current.close()
        if self.memory is None:  # the module's memory: put the restored one in its place
            holder = getattr(pl_module, "memory", None)
            if holder is not None and hasattr(holder, "local"):
                holder.local = restored
            else:
                pl_module.memory = restored
        else:
            self.memory = restored
        if self.on_restore is not None:
            self.on_restore(restored)
