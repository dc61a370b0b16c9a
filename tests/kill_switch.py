"""A test-only Lightning callback that kill -9s its own process at a given batch (fault injection)."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl


class KillAtBatch(pl.Callback):
    """SIGKILL this process at the end of training batch ``batch`` (1-based): no cleanup, no flush."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.seen = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
