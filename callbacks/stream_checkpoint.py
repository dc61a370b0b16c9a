"""Checkpoint a stream every N batches, atomically, as ``last.ckpt`` (plus numbered copies).

Lightning's ``ModelCheckpoint(every_n_train_steps=...)`` counts optimizer steps, and a closed-form
bridge (``ProcrustesBridgeModule``) never takes one, so its ``global_step`` stays 0. This callback
counts replayed batches instead. Each checkpoint is written to a temporary file and renamed over
``last.ckpt`` (``os.replace`` is atomic on POSIX), so a kill -9 at any moment leaves either the
previous or the new checkpoint, never a torn one. Resume with ``--ckpt_path <dirpath>/last.ckpt``.
A kill during a write leaves its ``.last.ckpt.tmp<pid>``; at the start of the next fit rank 0
removes those whose process is gone (``stale_removed`` counts them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class StreamCheckpoint(pl.Callback):
    """Args:
    dirpath: folder of the checkpoints (default: ``<trainer.log_dir or default_root_dir>/checkpoints``).
    every_n_batches: write after every this many training batches (and at the end of training).
    keep: numbered copies ``batch-<n>.ckpt`` to keep besides ``last.ckpt`` (0 = only last).
    """

    def __init__(self, dirpath: str | None = None, every_n_batches: int = 50, keep: int = 0) -> None:
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches={every_n_batches} must be >= 1; use e.g. 50")
        if keep < 0:
            raise ValueError(f"keep={keep} must be >= 0")
        self.dirpath = dirpath
        self.every_n_batches = every_n_batches
        self.keep = keep
        self.batches = 0  # batches replayed over the whole run (restored on resume)
        self._written: list[str] = []
        self.stale_removed = 0

    def _dir(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"

    def last_path(self, trainer: pl.Trainer) -> Path:
        """Where ``last.ckpt`` is written."""
        return self._dir(trainer) / "last.ckpt"

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for tmp in self._dir(trainer).glob(".last.ckpt.tmp*"):
            pid = tmp.name[len(".last.ckpt.tmp"):]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                tmp.unlink(missing_ok=True)
                self.stale_removed += 1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self.batches += 1
        if self.batches % self.every_n_batches == 0:
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    def save(self, trainer: pl.Trainer) -> Path:
        """Every rank calls this (the state of every callback is collected); rank 0 writes."""
        folder = self._dir(trainer)
        last = self.last_path(trainer)
        tmp = folder / f".last.ckpt.tmp{os.getpid()}"
        trainer.save_checkpoint(tmp, weights_only=False)  # full state: loops, callbacks, datamodule
        if trainer.is_global_zero:
            with open(tmp, "rb") as fh:  # the bytes are on disk before the rename makes them visible
                os.fsync(fh.fileno())
            if self.keep:
                numbered = folder / f"batch-{self.batches:08d}.ckpt"
                if not numbered.exists():
                    os.link(tmp, numbered)  # same bytes, no copy
                    self._written.append(str(numbered))
                while len(self._written) > self.keep:
                    Path(self._written.pop(0)).unlink(missing_ok=True)
            os.replace(tmp, last)
        trainer.strategy.barrier("stream_checkpoint")
        return last

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "written": list(self._written)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches = int(state_dict.get("batches", 0))
        self._written = list(state_dict.get("written", []))
