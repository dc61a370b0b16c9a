"""``WandbConfigCallback``: the whole resolved CLI config of a run in its W&B config.

LightningCLI saves the resolved config as a YAML file in the log folder; W&B, unless told, sees only
the module's hyper-parameters (``bridge, module, memory``), so runs cannot be grouped or filtered by
the admission policy, the trainer or the data. This callback (LightningCLI's ``SaveConfigCallback``,
which runs on rank 0 only) also writes every leaf of the resolved config, flattened to dotted keys
(``trainer.callbacks.0.init_args.config.counter.policy``), into each ``WandbLogger``'s run config.
With them the run's provenance (``provenance.versions.torch``, ``provenance.git.commit``...,
``luma_pl.tracking.provenance``). Categorical values stay strings; ``None`` becomes ``"null"`` and anything else not a scalar its
text, so W&B's filters see them as they were configured.
"""

from __future__ import annotations

from lightning.pytorch.cli import SaveConfigCallback


def flatten_config(value, prefix: str = "") -> dict:
    """Leaves of a nested dict / list as ``{dotted.key: scalar}`` (bool, int, float, str)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, (list, tuple)):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten_config(v, f"{prefix}.{i}" if prefix else str(i)))
        return out if out or not prefix else {prefix: "[]"}
    if value is None:
        return {prefix: "null"}
    if isinstance(value, (bool, int, float, str)):
        return {prefix: value}
    return {prefix: str(value)}


class WandbConfigCallback(SaveConfigCallback):
    """SaveConfigCallback that also puts the flattened resolved config in every W&B run's config."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        from luma_pl.tracking.loggers import wandb_loggers

        loggers = wandb_loggers(trainer)
        if not loggers:
            return
        from luma_pl.tracking.provenance import provenance

        flat = flatten_config(self.config.as_dict())
        flat.pop("config", None)  # the --config file paths (jsonargparse Path objects), not settings
        flat.update(flatten_config({"provenance": provenance()}))  # versions, git commit, machine, seed
        for lg in loggers:
            lg.experiment.config.update(flat, allow_val_change=True)
