"""W&B run names, groups, tags and job types from a run's command line and config."""

from __future__ import annotations

from jsonargparse import Namespace

from luma_pl.tracking.loggers import WANDB_LOGGER
from luma_pl.tracking.run_identity import name_wandb_loggers, run_identity, split_argv


def test_split_argv_reads_both_forms_and_every_config():
    configs, pairs = split_argv(["fit", "--config", "a/default.yaml", "--config=b/bridge_linear.yaml",
                                 "--model.init_args.bridge.lr=0.003", "--trainer.max_epochs", "10", "--flag"])
    assert configs == ["a/default.yaml", "b/bridge_linear.yaml"]
    assert pairs == {"model.init_args.bridge.lr": "0.003", "trainer.max_epochs": "10", "flag": "true"}


def test_identity_names_the_varied_settings_and_leaves_paths_out():
    flat = {"model.class_path": "luma_pl.modules.LearnedBridgeModule", "trainer.devices": "2", "trainer.num_nodes": 1,
            "trainer.callbacks.0.init_args.config.counter.policy": "count_min",
            "trainer.callbacks.2.init_args.epsilon_source": "interval"}
    ident = run_identity(flat, "train", ["fit", "--config", "configs/default.yaml", "--config", "configs/bridge_mlp.yaml",
                                         "--data.root", "/x/shards", "--trainer.default_root_dir", "/x/run",
                                         "--model.init_args.bridge.lr=0.003", "--ckpt_path", "/x/last.ckpt"])
    assert ident["group"] == "default+bridge_mlp" and ident["job_type"] == "train"
    assert ident["name"] == "train-default+bridge_mlp-bridge.lr=0.003"
    assert ident["tags"] == ["learned", "admission=count_min", "eps=interval", "world=2"]
    frozen = run_identity({"model.eval.fit_bridge": False}, "evaluate", [])
    assert frozen["name"] == "evaluate-luma" and frozen["tags"] == ["bridge-frozen"]


def _logger(**init) -> Namespace:
    base = {"name": None, "group": None, "tags": None, "job_type": None, "id": None}
    return Namespace(class_path=WANDB_LOGGER, init_args=Namespace(**{**base, **init}))


def test_the_config_and_a_resumed_run_keep_their_own_identity():
    ident = {"name": "n", "group": "g", "tags": ["t"], "job_type": "train"}
    own, resumed, fresh = _logger(name="mine"), _logger(id="abc123"), _logger()
    csv = Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(name="csv"))
    assert name_wandb_loggers([csv, own, resumed, fresh], ident) == 2
    assert own.init_args.name == "mine" and own.init_args.group == "g"
    assert resumed.init_args.name is None and resumed.init_args.group is None
    assert (fresh.init_args.name, fresh.init_args.group, fresh.init_args.tags, fresh.init_args.job_type) == \
        ("n", "g", ["t"], "train")
    assert csv.init_args.name == "csv"
