"""A W&B run's name, group, tags and job type, from the run's own command line and resolved config.

Defaults a W&B user expects, so an ablation reads in the runs table without naming anything:

- ``job_type``: ``train`` (train.py) or ``evaluate`` (evaluate.py);
- ``group``: the experiment, the stems of the ``--config`` files joined by ``+``
  (``default+bridge_linear``), so the runs of one experiment fold together;
- ``name``: ``<job_type>-<group>`` followed by the settings this run varied on its command line
  (``bridge.lr=0.003,bridge.epochs=10``: what a sweep agent or a grid passes), paths left out;
- ``tags``: the bridge module, the admission policy, the ε source, and ``world=N`` under DDP.

Whatever the config sets itself (``--trainer.logger.init_args.name ...``) is kept; a run resumed
by id (``--ckpt_path``) keeps the name and group it already has.
"""

from __future__ import annotations

from pathlib import Path

PATH_WORDS = ("root", "dir", "path", "logger", "checkpoint", "urls", "config", "wandb_new_run", "callbacks")
"""Command-line keys holding one of these words are locations or plumbing, not settings: not in a name."""
MAX_NAME = 120


def split_argv(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """(``--config`` files, ``{key: value}`` of the other ``--key value`` / ``--key=value`` pairs)."""
    configs, pairs, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            i += 1
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else "true"
            i += 1
        i += 1
        if key == "config":
            configs.append(value)
        else:
            pairs[key] = value
    return configs, pairs


def short_key(key: str) -> str:
    """``model.init_args.bridge.lr`` -> ``bridge.lr`` (the last two parts, without ``init_args``)."""
    parts = [p for p in key.split(".") if p != "init_args"]
    return ".".join(parts[-2:])


def run_identity(flat: dict, job_type: str, argv: list[str]) -> dict:
    """``{"name", "group", "tags", "job_type"}`` of one run (see the module docstring); ``flat``: the
    resolved config flattened to dotted keys (``callbacks.wandb_config.flatten_config``)."""
    configs, pairs = split_argv(argv)
    group = "+".join(Path(c).stem for c in configs) or "luma"
    varied = [f"{short_key(k)}={v}" for k, v in pairs.items()
              if not any(w in k.lower() for w in PATH_WORDS) and k != "subcommand"]
    name = f"{job_type}-{group}" + (f"-{','.join(varied)}" if varied else "")
    tags = []
    model = flat.get("model.class_path")
    if isinstance(model, str):
        tags.append(model.rsplit(".", 1)[-1].removesuffix("Module").removesuffix("Bridge").lower() or model)
    fit_bridge = flat.get("model.eval.fit_bridge")
    if isinstance(fit_bridge, bool):
        tags.append("bridge-learning" if fit_bridge else "bridge-frozen")
    for suffix, label in (("counter.policy", "admission"), ("epsilon_source", "eps")):
        value = next((v for k, v in sorted(flat.items()) if k.endswith(suffix) and isinstance(v, str)), None)
        if value is not None:
            tags.append(f"{label}={value}")
    devices, nodes = _count(flat.get("trainer.devices")), _count(flat.get("trainer.num_nodes", 1))
    if devices is not None and nodes is not None and devices * nodes > 1:
        tags.append(f"world={devices * nodes}")
    return {"name": name[:MAX_NAME], "group": group[:MAX_NAME], "tags": tags, "job_type": job_type}


def _count(value) -> int | None:
    """A device / node count given as an int or its text ("2"); None for "auto", lists, absent."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else None


def name_wandb_loggers(loggers, identity: dict) -> int:
    """Fill ``name`` / ``group`` / ``tags`` / ``job_type`` of every configured ``WandbLogger`` (a
    LightningCLI namespace with ``class_path`` / ``init_args``) where the config left them unset;
    a logger resuming a run by ``id`` is left as it is. Returns how many loggers were named."""
    from luma_pl.tracking.loggers import wandb_logger_configs

    named = 0
    for lg in wandb_logger_configs(loggers):
        if lg.init_args.get("id") is not None:
            continue
        for field in ("name", "group", "tags", "job_type"):
            if lg.init_args.get(field) is None:
                lg.init_args[field] = identity[field]
        named += 1
    return named
