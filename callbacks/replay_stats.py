"""Log the stream replay's running totals: events seen and corrupt samples skipped.

A corrupt sample or truncated shard never ends a replay; it is skipped and counted in
``batch["skipped"]`` by the worker that met it (docs/architecture.md). This callback sums those
counts over all ranks and logs ``replay/skipped_total`` (skip records), ``replay/events_skipped``
(events not replayed, per event), ``replay/skipped/<code>`` per reason (``SKIP_CODES``) and
``replay/events_seen``, so a long run shows its data losses next to its metrics instead of burying
them in worker logs. The reasons are a fixed list, so the counts are one vector summed over ranks.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from data_modules.shard_reader import SKIP_CODES


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
        self.events_skipped = 0  # this rank's
        self.reasons = dict.fromkeys(SKIP_CODES, 0)  # this rank's skip records per reason code
        self._batches = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not (isinstance(batch, dict) and "skipped" in batch):
            return
        self.events_seen += len(batch["key"])
        self.skipped_total += int(batch["skipped"])
        self.events_skipped += int(batch.get("events_skipped", 0))
        for code, n in batch.get("skip_reasons", {}).items():
            if code in self.reasons:
                self.reasons[code] += int(n)
        self._batches += 1
        if self._batches % self.every_n_batches == 0:
            self._log(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(pl_module)

    def _log(self, pl_module: pl.LightningModule) -> None:
        # sums over ranks: every rank logs at the same batch index (equal batch counts per rank)
        counts = [self.events_seen, self.skipped_total, self.events_skipped, *(self.reasons[c] for c in SKIP_CODES)]
        totals = pl_module.all_gather(torch.tensor(counts, dtype=torch.float64, device=pl_module.device))
        if totals.dim() == 2:
            totals = totals.sum(0)
        names = ["replay/events_seen", "replay/skipped_total", "replay/events_skipped",
                 *(f"replay/skipped/{c}" for c in SKIP_CODES)]
        for name, value in zip(names, totals.tolist(), strict=True):
            pl_module.log(name, float(value), rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {"events_seen": self.events_seen, "skipped_total": self.skipped_total,
                "events_skipped": self.events_skipped, "reasons": dict(self.reasons), "batches": self._batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.events_seen = int(state_dict.get("events_seen", 0))
        self.skipped_total = int(state_dict.get("skipped_total", 0))
        self.events_skipped = int(state_dict.get("events_skipped", 0))
        saved = state_dict.get("reasons", {})
        self.reasons = {c: int(saved.get(c, 0)) if isinstance(saved, dict) else 0 for c in SKIP_CODES}
        self._batches = int(state_dict.get("batches", 0))
