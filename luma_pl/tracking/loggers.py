"""Where a run's W&B loggers are found: the one place that asks, for a trainer, a config or a
checkpoint (the modules, callbacks, train.py and evaluate.py all go through these)."""

from __future__ import annotations

WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
"""The class path of Lightning's W&B logger in a LightningCLI config."""
WANDB_RUN_KEY = "luma_wandb_run"
"""Checkpoint key of the W&B run a train.py run logged to (``{"id": run id}``, written by
``BridgeModuleBase.on_save_checkpoint``), so a resume continues it and an evaluation names it."""


def recorded_wandb_run(checkpoint: dict) -> str | None:
    """The W&B run id a checkpoint recorded under ``WANDB_RUN_KEY``; None when absent or malformed
    (a checkpoint is untrusted data)."""
    run = checkpoint.get(WANDB_RUN_KEY)
    run_id = run.get("id") if isinstance(run, dict) else None
    return run_id if isinstance(run_id, str) and run_id else None


def wandb_loggers(trainer) -> list:
    """The trainer's ``WandbLogger``s (the objects exist on every rank; their runs on rank 0 only)."""
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def wandb_run(trainer):
    """The W&B run of the trainer's first ``WandbLogger`` on rank 0; None on other ranks or without one."""
    loggers = wandb_loggers(trainer)
    return loggers[0].experiment if loggers and trainer.is_global_zero else None


def wandb_logger_configs(loggers) -> list:
    """The ``WandbLogger`` entries (``class_path`` / ``init_args`` namespaces) of a config's
    ``trainer.logger`` (one entry, a list, or None)."""
    entries = loggers if isinstance(loggers, list) else [loggers]
    return [lg for lg in entries if getattr(lg, "class_path", None) == WANDB_LOGGER]
