"""Train a bridge on a replayed stream: ``python train.py fit --config configs/default.yaml``.

A plain ``LightningCLI``: ``model`` is any bridge LightningModule (``luma_pl.modules``), ``data`` the
``StreamReplayDataModule``, callbacks and loggers come from the YAML ``trainer`` section, and any
key can be overridden on the command line (``--model.init_args.bridge.lam 0.99``). The resolved
config is saved next to the run as ``luma_config.yaml`` (W&B writes its own ``config.yaml``).
Resume with ``--ckpt_path <file>``: the stream position, bridge, memory and counters come back.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from data_modules.stream_replay import StreamReplayDataModule
from luma_pl.modules.common import BridgeModuleBase
from luma_pl.threads import limit_cpu_threads

CONFIG_FILENAME = "luma_config.yaml"


class LumaCLI(LightningCLI):
    """LightningCLI with luma-pl defaults: one thread per process on CPU, config saved without
    colliding with W&B's own ``config.yaml``."""

    def before_instantiate_classes(self) -> None:
        limit_cpu_threads()

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        # a checkpoint from elsewhere must never run code: load it with weights_only=True unless the
        # user explicitly asks otherwise (our checkpoints hold tensors and primitives only)
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "weights_only" in self._subcommand_method_arguments[subcommand] and kwargs.get("weights_only") is None:
            kwargs["weights_only"] = True
        return kwargs


def cli_main(args: list[str] | None = None, run: bool = True) -> LumaCLI:
    return LumaCLI(
        model_class=BridgeModuleBase,
        subclass_mode_model=True,
        datamodule_class=StreamReplayDataModule,
        save_config_kwargs={"config_filename": CONFIG_FILENAME, "overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    cli_main()  # LightningCLI reads sys.argv itself (passing it as args too warns "args passed twice")
