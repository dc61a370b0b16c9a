"""Train a bridge on a replayed stream: ``python train.py fit --config configs/default.yaml``.

A plain ``LightningCLI``: ``model`` is any bridge LightningModule (``luma_pl.modules``), ``data`` the
``StreamReplayDataModule``, callbacks and loggers come from the YAML ``trainer`` section, and any
key can be overridden on the command line (``--model.init_args.bridge.lam 0.99``). The resolved
config is saved next to the run as ``luma_config.yaml`` (W&B writes its own ``config.yaml``).
Resume with ``--ckpt_path <file>``: the stream position, bridge, memory and counters come back.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI

from callbacks.heavy_hitter_admission import HeavyHitterAdmission
from callbacks.wandb_config import WandbConfigCallback, flatten_config
from data_modules.stream_replay import StreamReplayDataModule
from luma_pl.admission.pipeline import AdmissionConfig
from luma_pl.modules.common import BridgeModuleBase, check_hparams
from luma_pl.threads import limit_cpu_threads
from luma_pl.tracking.loggers import recorded_wandb_run, wandb_logger_configs, wandb_run
from luma_pl.tracking.sweep import METRICS_FILE

CONFIG_FILENAME = "luma_config.yaml"


def add_admission_group(parser) -> None:
    """The top-level ``admission`` group, the same in train.py and evaluate.py, so one overlay
    (``configs/ablation_*.yaml``) configures admission in both: train.py hands it to the
    ``HeavyHitterAdmission`` callback, evaluate.py to ``StreamEvaluator(admission=...)``."""
    parser.add_argument("--admission", type=AdmissionConfig | None, default=None,
                        help="Heavy-hitter admission (luma_pl.admission.pipeline.AdmissionConfig); "
                             "None keeps what the callback / model config says")


def add_memory_group(parser) -> None:
    """The top-level ``memory`` group (``MemoryConfig``), the same in train.py and evaluate.py: one
    overlay sizes the stream's memory in both; it replaces the model's own memory config."""
    from luma_pl.memory import MemoryConfig

    parser.add_argument("--memory", type=MemoryConfig | None, default=None,
                        help="The stream's memory (luma_pl.memory.MemoryConfig); replaces the model's memory config "
                             "in train.py (model.init_args.memory) and evaluate.py (model.memory)")


def add_stream_groups(parser) -> None:
    """The stream's top-level groups, the same in train.py and evaluate.py, so one overlay configures
    both: ``admission``, ``memory``, ``migration`` (the ``TierMigration`` callback) and ``safe_at_k``
    (the ``SafeAtKLogger`` callback; in evaluate.py also the evaluator's own certificate)."""
    from luma_pl.memory.migration import MigrationConfig
    from luma_pl.telemetry.safe_at_k import CertificateConfig

    add_admission_group(parser)
    add_memory_group(parser)
    parser.add_argument("--migration", type=MigrationConfig | None, default=None,
                        help="TierMigration schedule and policy (luma_pl.memory.migration.MigrationConfig)")
    parser.add_argument("--safe_at_k", type=CertificateConfig | None, default=None,
                        help="How answers are certified (luma_pl.telemetry.safe_at_k.CertificateConfig)")


def _as(cls, value):
    if hasattr(value, "as_dict"):  # a parsed group is a jsonargparse Namespace
        value = value.as_dict()
    cfg = value if isinstance(value, cls) else cls.from_dict(dict(value))
    cfg.validate()
    return cfg


def apply_callback_groups(config, callbacks, required: tuple[str, ...] = ("migration", "safe_at_k")) -> None:
    """Give the ``migration`` / ``safe_at_k`` groups to their callbacks; a group named in
    ``required`` whose callback is not configured is refused with the fix (it would do nothing)."""
    from callbacks.safe_at_k_logger import SafeAtKLogger
    from callbacks.tier_migration import TierMigration
    from luma_pl.memory.migration import MigrationConfig
    from luma_pl.telemetry.safe_at_k import CertificateConfig

    for group, cls, cb_cls in (("migration", MigrationConfig, TierMigration),
                               ("safe_at_k", CertificateConfig, SafeAtKLogger)):
        value = config.get(group)
        if value is None:
            continue
        found = [cb for cb in callbacks if isinstance(cb, cb_cls)]
        if not found and group in required:
            raise ValueError(f"{group}: is set but trainer.callbacks has no {cb_cls.__module__}.{cb_cls.__name__}; "
                             f"add one (see configs/default.yaml) or drop the {group} group")
        for cb in found:
            cb.configure(_as(cls, value))


def apply_admission(admission, callbacks) -> None:
    """Give train.py's ``admission`` group to its ``HeavyHitterAdmission`` callback; refused with the
    fix when no such callback is configured (the group would otherwise do nothing, silently)."""
    found = [cb for cb in callbacks if isinstance(cb, HeavyHitterAdmission)]
    if not found:
        raise ValueError("admission: is set but trainer.callbacks has no callbacks.heavy_hitter_admission."
                         "HeavyHitterAdmission; add one (see configs/default.yaml) or drop the admission group")
    cfg = _as(AdmissionConfig, admission)
    for cb in found:
        cb.configure(cfg)


def name_wandb_runs(cfg, job_type: str, argv: list[str]) -> None:
    """Name, group, tag and type the W&B runs of this config's WandbLoggers (``run_identity``)."""
    from luma_pl.tracking.run_identity import name_wandb_loggers, run_identity

    loggers = cfg.trainer.get("logger")
    if loggers:
        name_wandb_loggers(loggers, run_identity(flatten_config(cfg.as_dict()), job_type, argv))


class LumaCLI(LightningCLI):
    """LightningCLI with luma-pl defaults: one thread per process on CPU, config saved without
    colliding with W&B's own ``config.yaml``."""

    def add_arguments_to_parser(self, parser) -> None:
        add_stream_groups(parser)
        parser.add_argument("--wandb_new_run", type=bool, default=False,
                            help="with --ckpt_path: start a new W&B run instead of continuing the one the "
                                 "checkpoint recorded")

    def parse_arguments(self, parser, args) -> None:
        self.argv = list(sys.argv[1:] if args is None else args)  # the run's own settings name its W&B run
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        limit_cpu_threads()
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        if cfg.get("memory") is not None:  # the top-level memory group (shared with evaluate.py)
            cfg.model.init_args.memory = cfg.memory
        name_wandb_runs(cfg, "train", self.argv)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        if cfg.get("admission") is not None:
            apply_admission(cfg.get("admission"), self.trainer.callbacks)
        apply_callback_groups(cfg, self.trainer.callbacks)

    def after_fit(self) -> None:
        """Rank 0 leaves the run's final metrics beside it: ``<default_root_dir>/luma_metrics.json``
        (``{"metrics": {name: value}, "wandb_run": {"id", "name"} or None}``; read by the sweep runner)."""
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        import json

        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if getattr(v, "numel", lambda: 1)() == 1}
        wb = wandb_run(trainer)
        run = None if wb is None else {"id": wb.id, "name": wb.name}
        out = Path(trainer.default_root_dir) / METRICS_FILE
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"metrics": metrics, "wandb_run": run}, indent=1))

    def _parse_ckpt_path(self) -> None:
        # LightningCLI rebuilds the model from the checkpoint's hyper-parameters and imports the
        # class its ``_class_path`` names: a checkpoint is untrusted, so that name must be one of our
        # own modules (and nothing nested may name a class) BEFORE the parent parses anything
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if ckpt_path and Path(ckpt_path).is_file():
            ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
            hparams = ckpt.get("hyper_parameters", {}) or {}
            check_hparams(hparams, f"ckpt_path={ckpt_path!r}")
            self._continue_wandb_run(sub, ckpt)
            asked = self._asked_bridge_fields(sub, hparams)
            super()._parse_ckpt_path()
            # the checkpoint's hyper-parameters replaced the whole model config: put back the bridge
            # fields this run asks for (the module's on_load_checkpoint applies the resumable ones and
            # refuses the others with the flag to pass)
            bridge = self.config[sub].model.init_args.get("bridge") if asked else None
            for k, v in asked.items():
                bridge[k] = v
            return
        super()._parse_ckpt_path()

    def _continue_wandb_run(self, sub: str, ckpt: dict) -> None:
        """Resume the W&B run the checkpoint recorded (``luma_wandb_run``, written by the module):
        every configured ``WandbLogger`` without an id of its own gets ``id`` and ``resume='allow'``,
        unless ``--wandb_new_run true``."""
        run_id = recorded_wandb_run(ckpt)
        if run_id is None or self.config[sub].get("wandb_new_run"):
            return
        for lg in wandb_logger_configs(self.config[sub].trainer.get("logger")):
            init = lg.init_args
            if init.get("id") is None:
                init["id"] = run_id
                init["resume"] = "allow"

    def _asked_bridge_fields(self, sub: str, hparams: dict) -> dict:
        """Bridge fields of this run's config that differ from both the checkpoint's and the field's
        default (a value equal to its default cannot be told apart from one left unset: the
        checkpoint's value is kept, as LightningCLI does)."""
        import dataclasses

        from luma_pl.bridge.learned import LearnedBridgeConfig
        from luma_pl.bridge.procrustes import ProcrustesConfig

        model = self.config[sub].get("model")
        init = model.get("init_args") if model is not None else None
        bridge = init.get("bridge") if init is not None else None
        saved = hparams.get("bridge")
        if bridge is None or not isinstance(saved, dict):
            return {}
        cls = LearnedBridgeConfig if "kind" in saved else ProcrustesConfig
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        asked = {}
        for k, v in vars(bridge).items():
            if k in saved and k in defaults and v != saved[k] and v != defaults[k]:
                asked[k] = v
        return asked

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
        save_config_callback=WandbConfigCallback,
        save_config_kwargs={"config_filename": CONFIG_FILENAME, "overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    cli_main()  # LightningCLI reads sys.argv itself (passing it as args too warns "args passed twice")
