"""Log the stream replay's running totals: events seen and corrupt samples skipped.

A corrupt sample or truncated shard never ends a replay; it is skipped and counted in
``batch["skipped"]`` by the worker that met it (docs/architecture.md). This callback sums those
counts over all ranks and logs ``replay/skipped_total`` and ``replay/events_seen`` so a long run
shows its data losses next to its metrics instead of burying them in worker logs.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch


class ReplayStatsLogger(pl.Callback):
    """Args:
    every_n_batches: log every this many training batches (and at the end of each epoch).
    """

    def __init__(self, every_n_batches: int = 1) -> None:
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches={every_n_batches} must be >= 1; use e.g. 1 or 50")
        self.every_n_batches = every_n_batches
        self.events_seen = 0  # this rank's
        self.skipped_total = 0  # this rank's
        self._batches = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not (isinstance(batch, dict) and "skipped" in batch):
            return
        self.events_seen += len(batch["key"])
        self.skipped_total += int(batch["skipped"])
        self._batches += 1
        if self._batches % self.every_n_batches == 0:
            self._log(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(pl_module)

    def _log(self, pl_module: pl.LightningModule) -> None:
        # sums over ranks: every rank logs at the same batch index (equal batch counts per rank)
        totals = torch.tensor([self.events_seen, self.skipped_total], dtype=torch.float64, device=pl_module.device)
        totals = pl_module.all_gather(totals)
        if totals.dim() == 2:
            totals = totals.sum(0)
        pl_module.log("replay/events_seen", float(totals[0]), rank_zero_only=True)
        pl_module.log("replay/skipped_total", float(totals[1]), rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {"events_seen": self.events_seen, "skipped_total": self.skipped_total, "batches": self._batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.events_seen = int(state_dict.get("events_seen", 0))
        self.skipped_total = int(state_dict.get("skipped_total", 0))
        self._batches = int(state_dict.get("batches", 0))
