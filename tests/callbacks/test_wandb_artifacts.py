"""WandbArtifacts: an offline train.py + evaluate.py pair read back from the run files shows the
lineage data -> training -> evaluation: the shard set used by both, the checkpoint logged by the
train run (alias latest) and used by the evaluate run as the same artifact (same name, same file
digest), the memory snapshot and the report logged."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from wandb_helpers import fit_one_offline_run, run_file, run_offline, wandb_records  # noqa: E402

OURS = {"dataset", "model", "memory", "evaluation"}  # W&B's own run_table artifacts (wandb.Table) aside


def _artifacts(run_dir: str) -> list:
    return [r.artifact for r in wandb_records(run_file(run_dir)) if r.HasField("artifact") and r.artifact.type in OURS]


def _files(art) -> dict[str, str]:
    return {e.path: e.digest for e in art.manifest.contents}


@pytest.mark.slow
def test_train_then_evaluate_artifacts_join_in_one_lineage(tmp_path):
    run, train_dir, train_id = fit_one_offline_run(tmp_path)
    train = {a.type: a for a in _artifacts(train_dir)}
    assert set(train) == {"dataset", "model", "memory"}, [(a.type, a.name) for a in train.values()]
    data, model, memory = train["dataset"], train["model"], train["memory"]
    assert data.use_after_commit and data.name.startswith("shards-") and list(_files(data)) == ["manifest.json"]
    assert not model.use_after_commit and model.name == f"model-{train_id}" and list(model.aliases) == ["latest"]
    assert list(_files(model)) == ["model.ckpt"]
    assert memory.name == f"memory-{train_id}" and any(p.startswith("rank0/") for p in _files(memory))

    out = tmp_path / "eval"
    ev = run_offline([sys.executable, str(ROOT / "evaluate.py"), "--config", str(ROOT / "configs" / "eval_default.yaml"),
                      "--data.root", str(tmp_path / "shards"), "--data.batch_size", "64",
                      "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(out),
                      "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
                      "--trainer.logger.save_dir", str(out), "--trainer.logger.offline", "true",
                      "--trainer.logger.project", "luma-test", "--model.eval.k", "5",
                      "--model.eval.report_dir", str(out / "report"),
                      "--model.eval.bridge_checkpoint", str(run / "checkpoints" / "last.ckpt"),
                      "--model.eval.fit_bridge", "false", "--model.eval.epsilon_source", "frozen",
                      "--model.bridge.d_s", "16", "--model.bridge.d_c", "24",
                      "--model.memory.dim", "24", "--model.memory.pq_m", "8", "--model.memory.nlist", "4",
                      "--model.memory.hot_max_items", "200", "--model.memory.warm_max_items", "400"], tmp_path)
    assert ev.returncode == 0, ev.stdout[-2000:] + ev.stderr[-3000:]
    (eval_dir,) = sorted(Path(out).glob("wandb/offline-run-*"))
    evald = {a.type: a for a in _artifacts(str(eval_dir))}
    assert set(evald) == {"dataset", "model", "evaluation"}, [(a.type, a.name) for a in evald.values()]
    # the same shard set and the same checkpoint: same names and file digests as the train run's
    assert evald["dataset"].use_after_commit and evald["dataset"].name == data.name
    assert _files(evald["dataset"]) == _files(data)
    assert evald["model"].use_after_commit and evald["model"].name == model.name
    assert _files(evald["model"]) == _files(model)
    report = evald["evaluation"]
    assert not report.use_after_commit and {"report.json", "recall_over_time.png",
                                            "certified_radius_distribution.png"} <= set(_files(report))
    (run_rec,) = [r.run for r in wandb_records(run_file(str(eval_dir))) if r.HasField("run")][:1]
    assert run_rec.job_type == "evaluate" and run_rec.run_group == "eval_default" and "bridge-frozen" in run_rec.tags
    # the same, as a user reads it without syncing (python -m luma_pl.tracking.offline_run)
    from luma_pl.tracking.offline_run import describe, main

    d = describe(str(eval_dir))
    assert (d["job_type"], d["group"]) == ("evaluate", "eval_default")
    assert {(a["how"], a["type"], a["name"]) for a in d["artifacts"]} == {
        ("used", "dataset", data.name), ("used", "model", model.name), ("logged", "evaluation", report.name)}
    assert d["config"]["model.eval.fit_bridge"] is False and "eval/recall@k" in d["metrics"]
    assert main([str(eval_dir), train_dir]) == 0
    # W&B charts of the windows use events ingested as their x axis, as the report's plots do
    metrics = [r.metric for r in wandb_records(run_file(str(eval_dir))) if r.HasField("metric")]
    assert any(m.glob_name == "eval/*" and m.step_metric == "eval/events" for m in metrics)


@pytest.mark.slow
def test_selection_on_the_held_out_slice_logs_the_best_checkpoint(tmp_path):
    """ModelCheckpoint on val/recall@10 of the held-out slice (what the bridge never learned from):
    the best checkpoint is logged with the alias best, beside StreamCheckpoint's latest. A learned
    bridge: ModelCheckpoint saves only when the global step moved, and Procrustes takes no steps."""
    _, train_dir, _ = fit_one_offline_run(tmp_path, [
        "--model.init_args.module.holdout_by", "hash", "--model.init_args.module.holdout_fraction", "0.2",
        "--trainer.enable_checkpointing", "true",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.monitor", "val/recall@10", "--trainer.callbacks.mode", "max",
        "--trainer.callbacks.dirpath", str(tmp_path / "run" / "best"), "--trainer.max_epochs", "3"],
        overlays=("bridge_linear.yaml",))
    models = [a for a in _artifacts(train_dir) if a.type == "model"]
    aliases = {alias for a in models for alias in a.aliases}
    assert {"latest", "best"} <= aliases, [(a.name, list(a.aliases)) for a in models]
    assert len({a.name for a in models}) == 1  # versions of one artifact: model-<run id>
