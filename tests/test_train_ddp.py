"""`train.py fit` on two CPU processes (gloo, the registered `ddp_closed_form` strategy, sharded
memory, admission/migration/Safe@k callbacks) gives the same bridge and validation metrics as one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from test_train_resume import _fit, _shards
from wandb_helpers import read_wandb_history, run_file, wandb_records


def _csv_and_wandb(run: Path) -> list[str]:
    return ["--trainer.logger", json.dumps([
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}},
        {"class_path": "lightning.pytorch.loggers.WandbLogger",
         "init_args": {"save_dir": str(run), "offline": True, "project": "luma-test"}}])]


def _last_metrics(run: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    with open(next(run.rglob("metrics.csv"))) as fh:
        for row in csv.DictReader(fh):
            out.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return out


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_same_bridge_and_metrics_as_one(tmp_path):
    _shards(tmp_path / "shards")
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    one = _fit(tmp_path / "shards", tmp_path / "one", _csv_and_wandb(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = _fit(tmp_path / "shards", tmp_path / "two", ["--trainer.devices", "2", "--trainer.strategy", "ddp_closed_form",
                                                       *_csv_and_wandb(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]

    a = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert int(a["state_dict"]["bridge.pairs_total"]) == int(b["state_dict"]["bridge.pairs_total"]) == 768
    torch.testing.assert_close(a["state_dict"]["bridge.W"], b["state_dict"]["bridge.W"], atol=1e-9, rtol=0)
    ma, mb = _last_metrics(tmp_path / "one"), _last_metrics(tmp_path / "two")
    for key in ("val/recall@10", "val/mrr@10", "val/ndcg@10", "val/recall@1", "val/queries",
                "replay/events_seen", "safe/epsilon"):
        assert mb[key] == pytest.approx(ma[key], rel=1e-6), key
    # W&B: one run for the two-rank job (rank 0 logs), with the reduced metrics one process logs,
    # the world size in its config and tags, and the memory snapshot of both ranks' shards
    (run_dir,) = list((tmp_path / "two" / "wandb").glob("offline-run-*"))
    history = [r for r in read_wandb_history(str(run_dir)) if "val/recall@10" in r]
    assert history and history[-1]["val/recall@10"] == pytest.approx(ma["val/recall@10"], rel=1e-6)
    records = list(wandb_records(run_file(str(run_dir))))
    (run_rec,) = [r.run for r in records if r.HasField("run")][:1]
    assert "world=2" in run_rec.tags
    (memory,) = [r.artifact for r in records if r.HasField("artifact") and r.artifact.type == "memory"]
    ranks = {e.path.split("/")[0] for e in memory.manifest.contents}
    assert ranks == {"rank0", "rank1"}, ranks
