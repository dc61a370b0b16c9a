"""Sweeps: the shipped W&B sweep files reach train.py's CLI exactly as W&B's agent passes them, and
the same search runs here without W&B's server, selecting on the logged metric."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from luma_pl.tracking.sweep import agent_command, grid, load_sweep, run_sweep, sample

ROOT = Path(__file__).resolve().parents[3]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_every_point_of_a_shipped_sweep_reaches_the_cli(path, tmp_path):
    from train import cli_main

    sweep = load_sweep(path)
    points = grid(sweep["parameters"])
    assert len(points) >= 4
    for values in points:
        cmd = agent_command(sweep, values, interpreter="python")
        assert cmd[:3] == ["python", "train.py", "fit"] and all(f"--{k}={v}" in cmd for k, v in values.items())
        cli = cli_main(cmd[3:] + ["--data.root", str(tmp_path), "--trainer.default_root_dir", str(tmp_path)], run=False)
        for key, value in values.items():  # model.init_args.bridge.lr -> the built bridge's config
            target = cli.trainer if key.startswith("trainer.") else cli.model.bridge.config
            assert getattr(target, key.rsplit(".", 1)[1]) == value, key


def _write(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


BASE = {"program": "train.py", "method": "grid", "metric": {"name": "val/recall@10", "goal": "maximize"},
        "parameters": {"model.init_args.bridge.lr": {"values": [0.001, 0.003]}},
        "command": ["${env}", "${interpreter}", "${program}", "fit", "${args}"]}


@pytest.mark.parametrize(("change", "match"), [
    ({"method": "bayes"}, r"method='bayes'.*wandb agent"),
    ({"parameters": {"x": {"distribution": "uniform", "min": 0, "max": 1}}}, r"parameters.x has a distribution"),
    ({"command": ["python", "train.py"]}, r"\$\{args\}"),
    ({"metric": {"name": "val/recall@10", "goal": "up"}}, r"metric=.*goal"),
    ({"parameters": {"x": {"values": []}}}, r"parameters.x.values=\[\]"),
])
def test_a_bad_sweep_file_is_refused_with_the_field(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        load_sweep(_write(tmp_path, {**BASE, **change}))


def test_grid_and_random_draws():
    assert grid({"a": {"values": [1, 2]}, "b": {"value": "x"}, "c": {"values": [3, 4]}}) == [
        {"a": 1, "b": "x", "c": 3}, {"a": 1, "b": "x", "c": 4}, {"a": 2, "b": "x", "c": 3}, {"a": 2, "b": "x", "c": 4}]
    spec = {"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
            "n": {"distribution": "int_uniform", "min": 1, "max": 3}, "k": {"values": ["a", "b"]}}
    draws = sample(spec, 50, seed=1)
    assert draws == sample(spec, 50, seed=1)
    assert all(1e-4 <= d["lr"] <= 1e-2 and d["n"] in (1, 2, 3) and d["k"] in ("a", "b") for d in draws)
    assert {d["n"] for d in draws} == {1, 2, 3}


@pytest.mark.slow
def test_a_local_grid_runs_offline_logs_the_metric_and_names_the_best(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from test_train_resume import _shards
    from wandb_helpers import read_wandb_history

    _shards(tmp_path / "shards")
    sweep = load_sweep(_write(tmp_path, {**BASE, "command": [
        "${env}", "${interpreter}", "${program}", "fit", "--config", "configs/default.yaml",
        "--config", "configs/bridge_linear.yaml", "${args}"]}))
    run = tmp_path / "runs"
    extra = ["--data.root", str(tmp_path / "shards"), "--data.batch_size", "64", "--trainer.enable_progress_bar", "false",
             "--trainer.logger", "lightning.pytorch.loggers.WandbLogger", "--trainer.logger.save_dir", str(run),
             "--trainer.logger.offline", "true", "--trainer.logger.project", "luma-test",
             "--model.init_args.bridge.d_s", "16", "--model.init_args.bridge.d_c", "24",
             "--model.init_args.memory.dim", "24", "--model.init_args.memory.pq_m", "8",
             "--model.init_args.memory.hot_max_items", "200", "--model.init_args.memory.warm_max_items", "400",
             "--model.init_args.memory.nlist", "4", "--trainer.callbacks.dirpath", str(run / "checkpoints")]
    res = run_sweep(sweep, tmp_path / "sweep", extra, ROOT, timeout=400)
    assert [r["returncode"] for r in res["runs"]] == [0, 0], [r.get("error") for r in res["runs"]]
    metrics = [r["metric"] for r in res["runs"]]
    assert all(isinstance(m, float) and 0 <= m <= 1 for m in metrics)
    assert res["selected"] == max(range(2), key=lambda i: metrics[i])
    assert json.loads((tmp_path / "sweep" / "sweep_results.json").read_text())["selected"] == res["selected"]
    for r in res["runs"]:  # the W&B run of each point logged the metric the sweep optimises, and its setting
        (run_dir,) = list((run / "wandb").glob(f"offline-run-*-{r['wandb_run']['id']}"))
        logged = [row["val/recall@10"] for row in read_wandb_history(str(run_dir)) if "val/recall@10" in row]
        assert logged and logged[-1] == pytest.approx(r["metric"])
        assert f"bridge.lr={r['values']['model.init_args.bridge.lr']}" in r["wandb_run"]["name"]
