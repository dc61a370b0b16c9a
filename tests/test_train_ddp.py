"""`train.py fit` on two CPU processes (gloo, the registered `ddp_closed_form` strategy, sharded
memory, admission/migration/Safe@k callbacks) gives the same bridge and validation metrics as one."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from test_train_resume import _fit, _shards


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
    one = _fit(tmp_path / "shards", tmp_path / "one", [])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _fit(tmp_path / "shards", tmp_path / "two", ["--trainer.devices", "2", "--trainer.strategy", "ddp_closed_form"])
    assert two.returncode == 0, two.stderr[-3000:]

    a = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert int(a["state_dict"]["bridge.pairs_total"]) == int(b["state_dict"]["bridge.pairs_total"]) == 768
    torch.testing.assert_close(a["state_dict"]["bridge.W"], b["state_dict"]["bridge.W"], atol=1e-9, rtol=0)
    ma, mb = _last_metrics(tmp_path / "one"), _last_metrics(tmp_path / "two")
    for key in ("val/recall@10", "val/mrr@10", "val/ndcg@10", "val/recall@1", "val/queries",
                "replay/events_seen", "safe/epsilon"):
        assert mb[key] == pytest.approx(ma[key], rel=1e-6), key
