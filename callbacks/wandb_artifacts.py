"""``WandbArtifacts``: the run's inputs and outputs as W&B artifacts, so lineage reads data ->
training -> evaluation (``luma_pl.tracking.lineage`` names them and says how offline runs record it).

- fit: the replayed shard set is declared **used** at the start; at the end the stream checkpoint
  (``StreamCheckpoint``'s ``last.ckpt``, alias ``latest``; a ``ModelCheckpoint``'s best one,
  alias ``best``) and the memory snapshot (every rank saves its shard, rank 0 logs the folder)
  are **logged**.
- test (evaluate.py): the shard set and the train.py checkpoint it replays
  (``model.eval.bridge_checkpoint``) are declared **used**; ``report.json`` and the plots are
  **logged** at teardown (the evaluator writes them in its own ``on_test_end``, after the callbacks').

Rank 0 talks to W&B; without a ``WandbLogger`` the callback does nothing. Offline by default (the
logger decides); ``wandb sync <run dir>`` uploads everything later.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from luma_pl.tracking.loggers import wandb_loggers, wandb_run


class WandbArtifacts(pl.Callback):
    """Args:
    log_data: declare the replayed shard set as used (fit and test).
    log_checkpoint: log the stream checkpoint at the end of fit / declare the evaluated one used.
    log_memory: save and log the memory snapshot at the end of fit.
    log_report: log evaluate.py's report and plots.
    memory_dir: where the snapshot is saved (default ``<default_root_dir>/memory_snapshot``).
    """

    def __init__(self, log_data: bool = True, log_checkpoint: bool = True, log_memory: bool = True,
                 log_report: bool = True, memory_dir: str | None = None) -> None:
        self.log_data = log_data
        self.log_checkpoint = log_checkpoint
        self.log_memory = log_memory
        self.log_report = log_report
        self.memory_dir = memory_dir
        self.logged: list[str] = []  # "<used|logged> <name> (<type>)" of this process, in order
        self._data_declared = False

    def _record(self, run, how: str, artifact, aliases: list[str] | None = None) -> None:
        from luma_pl.tracking.lineage import declare_logged, declare_used

        (declare_used if how == "used" else declare_logged)(run, artifact, aliases)
        self.logged.append(f"{how} {artifact.name} ({artifact.type})")

    def _declare_data(self, trainer: pl.Trainer, run) -> None:
        from luma_pl.tracking.lineage import shards_artifact

        dm = trainer.datamodule
        dataset = getattr(dm, "dataset", None)
        if not self.log_data or self._data_declared or dataset is None:
            return
        root = dm.cfg.root if dm.cfg.webdataset is None else ",".join(dm.cfg.webdataset.urls)
        self._record(run, "used", shards_artifact(dataset.manifest.to_json(), root))
        self._data_declared = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = wandb_run(trainer)
        if run is not None:
            self._declare_data(trainer, run)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from luma_pl.tracking.lineage import checkpoint_artifact, files_artifact

        # every rank saves its shard, but only where a WandbLogger is configured (the same on every rank:
        # the logger object exists on all of them, its run on rank 0 only)
        snapshot = self._save_memory(trainer, pl_module) if self.log_memory and bool(wandb_loggers(trainer)) else None
        run = wandb_run(trainer)
        if run is None:
            return
        meta = {"global_step": trainer.global_step, "epoch": trainer.current_epoch}
        if self.log_checkpoint:
            for path, aliases in self._checkpoints(trainer):
                self._record(run, "logged", checkpoint_artifact(path, run.id, meta), aliases)
        if snapshot is not None:
            self._record(run, "logged", files_artifact(
                snapshot, f"memory-{run.id}", "memory", "the tiered memory at the end of fit (luma_pl.memory.load "
                "reads a rank's folder)", dict(meta, world_size=trainer.world_size)), ["latest"])

    def _checkpoints(self, trainer: pl.Trainer) -> list[tuple[Path, list[str]]]:
        """(file, aliases) to log: StreamCheckpoint's last.ckpt as ``latest``, a ModelCheckpoint's
        best as ``best`` (one entry with both aliases when they are the same file)."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        from callbacks.stream_checkpoint import StreamCheckpoint

        out: dict[Path, list[str]] = {}
        for cb in trainer.callbacks:
            if isinstance(cb, StreamCheckpoint) and cb.last_path(trainer).is_file():
                out.setdefault(cb.last_path(trainer).resolve(), []).append("latest")
            elif isinstance(cb, ModelCheckpoint):
                if cb.best_model_path and Path(cb.best_model_path).is_file():
                    out.setdefault(Path(cb.best_model_path).resolve(), []).append("best")
                if cb.last_model_path and Path(cb.last_model_path).is_file() and not any("latest" in a for a in out.values()):
                    out.setdefault(Path(cb.last_model_path).resolve(), []).append("latest")
        return list(out.items())

    def _save_memory(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path | None:
        from luma_pl.memory import save

        memory = getattr(pl_module, "memory", None)
        if memory is None:
            return None
        folder = Path(self.memory_dir or Path(trainer.default_root_dir) / "memory_snapshot")
        save(memory.shard, str(folder / f"rank{trainer.global_rank}"))
        trainer.strategy.barrier("wandb_artifacts_memory")
        return folder

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from luma_pl.tracking.lineage import checkpoint_artifact

        run = wandb_run(trainer)
        if run is None:
            return
        self._declare_data(trainer, run)
        ckpt = getattr(getattr(pl_module, "cfg", None), "bridge_checkpoint", None)
        if self.log_checkpoint and ckpt:  # the evaluator read the checkpoint's train run when it loaded it
            self._record(run, "used", checkpoint_artifact(ckpt, pl_module.checkpoint_wandb_run))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from luma_pl.tracking.lineage import files_artifact

        paths = getattr(pl_module, "report_paths", None)
        run = wandb_run(trainer) if stage == "test" and self.log_report and paths else None
        if run is None:
            return
        summary = {k: v for k, v in (getattr(pl_module, "summary", None) or {}).items()  # W&B metadata is JSON:
                   if isinstance(v, str) or isinstance(v, (int, float)) and math.isfinite(v)}  # no NaN / inf
        self._record(run, "logged", files_artifact(sorted(str(p) for p in paths.values()), f"report-{run.id}",
                                                   "evaluation", "report.json and the plots of a streaming replay",
                                                   summary), ["latest"])

    def state_dict(self) -> dict[str, Any]:
        return {"logged": list(self.logged)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.logged = list(state_dict.get("logged", []))
