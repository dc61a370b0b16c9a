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
    """``memory``: the TieredMemory to save; ``on_restore(memory)`` receives the restored one (the
    callback's ``memory`` attribute is replaced too), e.g. to hand it to the LightningModule."""

    def __init__(self, memory: TieredMemory, on_restore: Callable[[TieredMemory], None] | None = None):
        self.memory = memory
        self.on_restore = on_restore

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = state_dict(self.memory)
        # tensors, not numpy arrays: torch.load(weights_only=True) accepts them without allow-lists
        checkpoint[STATE_KEY] = {"arrays": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state["arrays"].items()},
                                 "meta": state["meta"]}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(STATE_KEY)
        if state is None:
            return
        arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in state["arrays"].items()}
        restored = from_state_dict({"arrays": arrays, "meta": state["meta"]})
        self.memory.close()
        self.memory = restored
        if self.on_restore is not None:
            self.on_restore(restored)
