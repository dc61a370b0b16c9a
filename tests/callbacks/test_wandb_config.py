"""W&B runs of train.py: the whole resolved config in the run's config (categorical values as
strings), and ``--ckpt_path`` continuing the run the checkpoint recorded (``--wandb_new_run true``
starts a fresh one). Real offline W&B runs, read back from their files."""

from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from callbacks.wandb_config import flatten_config

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from wandb_helpers import fit_one_offline_run, offline_fit, offline_runs, wandb_records  # noqa: E402


def test_flatten_config_keeps_scalars_and_names_every_leaf():
    flat = flatten_config({"a": {"b": 1, "c": [{"d": "x"}, 2.5], "e": None, "f": []}, "g": True})
    assert flat == {"a.b": 1, "a.c.0.d": "x", "a.c.1": 2.5, "a.e": "null", "a.f": "[]", "g": True}


@pytest.mark.slow
def test_config_reaches_wandb_and_ckpt_path_continues_the_run(tmp_path):
    run, d1, run_id = fit_one_offline_run(tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True, map_location="cpu")["luma_wandb_run"] == {"id": run_id}
    # the resolved config, every group, in the run's config file (categorical values as strings)
    cfg = {}
    for path in glob.glob(os.path.join(d1, "files", "config.yaml")):
        import yaml

        cfg = {k: v.get("value") if isinstance(v, dict) else v for k, v in yaml.safe_load(open(path)).items()}
    if not cfg:  # wandb-core may keep the config only in the .wandb records
        for rec in wandb_records(glob.glob(os.path.join(d1, "*.wandb"))[0]):
            if rec.HasField("config"):
                for item in rec.config.update:
                    cfg[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
    assert cfg.get("provenance.versions.torch") and "provenance.git.commit" in cfg
    # the run's name, group, type and tags from its command line and config
    (run_rec,) = [r.run for r in wandb_records(glob.glob(os.path.join(d1, "*.wandb"))[0]) if r.HasField("run")][:1]
    assert run_rec.job_type == "train" and run_rec.run_group == "default"
    assert run_rec.display_name.startswith("train-default-data.batch_size=64,trainer.enable_progress_bar=false,bridge.d_s=16"), run_rec.display_name
    assert {"procrustes", "admission=space_saving", "eps=interval"} <= set(run_rec.tags), list(run_rec.tags)
    policy = [k for k in cfg if k.endswith("counter.policy")]
    assert policy and isinstance(cfg[policy[0]], str), sorted(cfg)[:40]
    assert any(k.startswith("trainer.") for k in cfg) and any(k.startswith("data.") for k in cfg)
    # --ckpt_path continues the same run id; --wandb_new_run true starts another
    again = offline_fit(tmp_path / "shards", run, ["--ckpt_path", str(ckpt), "--trainer.max_epochs", "2"])
    assert again.returncode == 0, again.stderr[-3000:]
    ids = [d.rsplit("-", 1)[1] for d in offline_runs(run)]
    assert len(ids) == 2 and ids.count(run_id) == 2, ids
    fresh = offline_fit(tmp_path / "shards", run, ["--ckpt_path", str(ckpt), "--trainer.max_epochs", "3",
                                           "--wandb_new_run", "true"])
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    ids = [d.rsplit("-", 1)[1] for d in offline_runs(run)]
    assert len(ids) == 3 and len(set(ids)) == 2, ids
