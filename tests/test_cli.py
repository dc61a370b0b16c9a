"""train.py: every config in configs/ loads through LightningCLI; unknown keys are rejected; a fit
on real demo-format shards runs end to end and saves the resolved config as luma_config.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from data_modules.shard_writer import write_blocks
from train import CONFIG_FILENAME, cli_main

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))
DEFAULT = CONFIGS[0].with_name("default.yaml")


# overlays are layered on the base config they were written for; GPU configs are checked on CPU
BASE = {"ablation_": "eval_default.yaml", "ddp.yaml": "default.yaml"}
ON_CPU = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true"]


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_instantiates(config, tmp_path):
    base = next((b for prefix, b in BASE.items() if config.name.startswith(prefix)), None)
    args = ([] if base is None else ["--config", str(config.with_name(base))]) + [
        "--config", str(config), "--data.root", str(tmp_path), "--trainer.default_root_dir", str(tmp_path)]
    if config.name in ("clip_clap.yaml", "ddp.yaml"):
        args += ON_CPU + ["--trainer.devices", "2" if config.name == "ddp.yaml" else "1"]
    if (base or config.name).startswith("eval"):  # evaluate.py's configs
        from data_modules.stream_replay import StreamReplayDataModule
        from evaluate import EvalCLI
        from luma_pl.evaluation.stream_eval import StreamEvaluator

        cli = EvalCLI(StreamEvaluator, StreamReplayDataModule, run=False, args=args)
        if config.name.startswith("ablation_"):
            # one overlay, both entry points: train.py's admission callback gets the same config
            from callbacks.heavy_hitter_admission import HeavyHitterAdmission
            from luma_pl.admission.pipeline import AdmissionConfig

            want = AdmissionConfig.from_dict(yaml.safe_load(config.read_text())["admission"])
            assert cli.model.admission_cfg == want
            train = cli_main(["--config", str(DEFAULT), "--config", str(config), "--data.root", str(tmp_path),
                              "--trainer.default_root_dir", str(tmp_path)], run=False)
            (cb,) = [c for c in train.trainer.callbacks if isinstance(c, HeavyHitterAdmission)]
            assert cb.cfg == want
    else:
        cli = cli_main(args, run=False)
    assert cli.model is not None and cli.datamodule is not None


@pytest.mark.parametrize(("override", "expected"), [
    (["--model.init_args.bridge.lamda", "0.9"], r"Option 'lamda' is not accepted"),
    (["--model.init_args.bridge.lam", "nine"], r"lam.*nine"),
    (["--model.init_args.memory.hot_max_items", "many"], r"hot_max_items.*many"),
])
def test_a_misspelled_or_ill_typed_key_is_rejected_when_the_config_is_parsed(tmp_path, capsys, override, expected):
    """Typed config groups all the way down: the parser refuses the key before anything is built."""
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(DEFAULT), "--data.root", str(tmp_path), *override, "--print_config"])
    err = capsys.readouterr().err
    assert re.search(expected, err, re.S), err[-2000:]


def test_an_admission_group_without_its_callback_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no callbacks.heavy_hitter_admission.HeavyHitterAdmission"):
        cli_main(["--config", str(DEFAULT), "--data.root", str(tmp_path), "--trainer.callbacks", "[]",
                  "--admission.mode", "items"], run=False)


def test_a_dict_passed_in_python_is_still_checked():
    from luma_pl.configuration import ConfigError
    from luma_pl.modules import ProcrustesBridgeModule

    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lamda'\]"):
        ProcrustesBridgeModule(bridge={"d_s": 4, "d_c": 4, "lamda": 0.9})


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_fit_on_demo_format_shards(tmp_path):
    rng = np.random.default_rng(0)
    n = 600
    s = _unit(rng, n, 256)
    # canonical = a fixed semi-orthogonal map of the source: the bridge must recover it
    q, _ = np.linalg.qr(rng.standard_normal((384, 256)))
    c = (s @ q.T).astype(np.float32)
    write_blocks(tmp_path / "shards", keys=[f"{i:05d}" for i in range(n)], ts=np.arange(n),
                 emb={"wordllama": s, "minilm": c, "query_wordllama": s, "query_minilm": c},
                 block_events=100, events_per_shard=200)
    cli = cli_main(["fit", "--config", str(DEFAULT),
                    "--data.root", str(tmp_path / "shards"), "--trainer.default_root_dir", str(tmp_path / "run"),
                    "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                    "--trainer.logger.save_dir", str(tmp_path / "run"),
                    "--trainer.callbacks.dirpath", str(tmp_path / "run" / "checkpoints"),
                    "--model.init_args.memory.pq_m", "64",
                    "--trainer.enable_progress_bar", "false"])
    metrics = cli.trainer.callback_metrics
    assert float(metrics["val/recall@1"]) == pytest.approx(1.0)
    assert int(cli.model.bridge.pairs_total) == n
    assert list((tmp_path / "run").rglob(CONFIG_FILENAME)), "resolved config not saved with the run"
    # train.py test: the trained bridge from the checkpoint, scored on the test stream
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    tested = cli_main(["test", "--config", str(DEFAULT), "--data.root", str(tmp_path / "shards"),
                       "--trainer.default_root_dir", str(tmp_path / "test"), "--trainer.logger", "false",
                       "--trainer.callbacks.dirpath", str(tmp_path / "test" / "checkpoints"),
                       "--model.init_args.memory.pq_m", "64", "--trainer.enable_progress_bar", "false",
                       "--ckpt_path", str(ckpt)])
    tm = tested.trainer.callback_metrics
    assert float(tm["test/recall@1"]) == pytest.approx(1.0) and float(tm["test/queries"]) == n


def test_one_memory_group_sizes_the_memory_in_train_and_evaluate(tmp_path):
    """The top-level ``memory`` group (like ``admission``): one overlay, the same memory in both."""
    import yaml

    from data_modules.stream_replay import StreamReplayDataModule
    from evaluate import EvalCLI
    from luma_pl.evaluation.stream_eval import StreamEvaluator

    overlay = tmp_path / "memory.yaml"
    overlay.write_text(yaml.safe_dump({"memory": {"dim": 384, "hot_max_items": 123, "hot_max_bytes": 1 << 22,
                                                  "warm_max_items": 0, "pq_m": 96, "nlist": 0}}))
    train = cli_main(["--config", str(DEFAULT), "--config", str(overlay), "--data.root", str(tmp_path),
                      "--trainer.logger", "false"], run=False)
    assert train.model.runtime().memory.cfg.hot_max_items == 123
    ev = EvalCLI(StreamEvaluator, StreamReplayDataModule, run=False,
                 args=["--config", str(DEFAULT.with_name("eval_default.yaml")), "--config", str(overlay),
                       "--data.root", str(tmp_path), "--trainer.logger", "false"])
    assert ev.model.memory_cfg.hot_max_items == 123 and ev.model.memory_cfg.warm_max_items == 0


def test_migration_and_safe_at_k_groups_configure_both_entry_points(tmp_path):
    """One overlay with migration + safe_at_k: train.py's TierMigration / SafeAtKLogger and the
    evaluator's certificate take it; a migration group without its callback is refused."""
    import yaml

    from data_modules.stream_replay import StreamReplayDataModule
    from evaluate import EvalCLI
    from luma_pl.evaluation.stream_eval import StreamEvaluator

    overlay = tmp_path / "stream.yaml"
    overlay.write_text(yaml.safe_dump({"migration": {"every_n_batches": 7, "capacity": 99, "promote_min_count": 3},
                                       "safe_at_k": {"k": 5, "epsilon_source": "reference", "rescore": False}}))
    train = cli_main(["--config", str(DEFAULT), "--config", str(overlay), "--data.root", str(tmp_path),
                      "--trainer.logger", "false"], run=False)
    cbs = {type(cb).__name__: cb for cb in train.trainer.callbacks}
    mig, cert = cbs["TierMigration"], cbs["SafeAtKLogger"]
    assert mig.every_n_batches == 7 and mig.policy.capacity == 99 and mig.policy.promote_min_count == 3
    assert cert.k == 5 and cert.epsilon_source == "reference" and cert.rescore is False
    eval_args = ["--config", str(DEFAULT.with_name("eval_default.yaml")), "--data.root", str(tmp_path),
                 "--trainer.logger", "false"]
    with pytest.raises(ValueError, match="migration: is set but trainer.callbacks has no callbacks.tier_migration"):
        EvalCLI(StreamEvaluator, StreamReplayDataModule, run=False, args=[*eval_args, "--config", str(overlay)])
    overlay.write_text(yaml.safe_dump({"safe_at_k": {"k": 5, "epsilon_source": "reference", "rescore": False}}))
    ev = EvalCLI(StreamEvaluator, StreamReplayDataModule, run=False, args=[*eval_args, "--config", str(overlay)])
    assert ev.model.cfg.k == 5 and ev.model.cfg.epsilon_source == "reference" and ev.model.cfg.rescore is False
    with pytest.raises(SystemExit):  # parse-time refusal of a bad value in the group
        cli_main(["--config", str(DEFAULT), "--data.root", str(tmp_path), "--migration.capacity", "many"], run=False)
