"""A user's own image-text WebDataset shards end to end (issue 14): img2dataset-style ``00000.tar``
(jpg/txt/json, read with the webdataset library, hostile samples counted) -> ``build_shards
webdataset`` with a tiny open_clip model -> ``train.py fit`` (configs/webdataset_image_text.yaml,
a caption -> image Procrustes bridge) -> ``evaluate.py`` replaying the trained bridge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
D = 24  # the tiny open_clip model's embedding size


@pytest.mark.slow
def test_img2dataset_shards_through_build_fit_and_evaluate(tmp_path, capsys):
    from tiny_encoders import TINY_CLIP
    from wds_helpers import img2dataset_shards

    from data_modules.build_shards import main as build
    from evaluate import run_evaluation
    from luma_pl.encoders import OpenClipEncoder
    from train import cli_main

    good = img2dataset_shards(tmp_path / "wds", shards=4, per_shard=40, marker=tmp_path / "pwned")
    ckpt = tmp_path / "tiny_clip.pt"
    torch.save(OpenClipEncoder(model_cfg=TINY_CLIP, precision="fp32").model.state_dict(), ckpt)
    enc = json.dumps({"kind": "clip", "model_cfg": TINY_CLIP, "path": str(ckpt), "precision": "fp32"})
    assert build(["webdataset", "--src", str(tmp_path / "wds" / "{00000..00003}.tar"), "--out", str(tmp_path / "shards"),
                  "--batch-size", "32", "--ts-field", "ts", "--no-progress", "--events-per-shard", "64",
                  "--encoders", enc]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events"] == len(good) == 160 and report["skipped"]["total"] == 4
    assert not (tmp_path / "pwned").exists()

    run = tmp_path / "run"
    cli = cli_main(["fit", "--config", str(ROOT / "configs" / "webdataset_image_text.yaml"),
                    "--data.root", str(tmp_path / "shards"), "--data.batch_size", "32", "--data.num_workers", "0",
                    "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(run),
                    "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(run),
                    "--trainer.callbacks.dirpath", str(run / "checkpoints"), "--trainer.enable_progress_bar", "false",
                    "--model.init_args.bridge.d_s", str(D), "--model.init_args.bridge.d_c", str(D),
                    "--model.init_args.bridge.refresh_every", "64", "--model.init_args.memory.dim", str(D),
                    "--model.init_args.memory.pq_m", "8", "--model.init_args.memory.warm_max_items", "0",
                    "--model.init_args.memory.nlist", "0",
                    "--model.init_args.memory.hot_max_items", "1000"])
    dm, model = cli.datamodule, cli.model
    assert dm.events_seen == 160 and int(model.bridge.pairs_total) == 159  # sample 4 has no caption: no pair
    assert model.runtime().counts["ingested"] == 160 and len(model.memory) == 160
    assert (run / "checkpoints" / "last.ckpt").is_file()

    summary, ecli = run_evaluation([
        "--config", str(ROOT / "configs" / "eval_default.yaml"), "--data.root", str(tmp_path / "shards"),
        "--data.batch_size", "32", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--model.eval.item_space", "clip", "--model.eval.source_space", "clip_text",
        "--model.eval.query_space", "clip_text", "--model.eval.k", "5",
        "--model.eval.bridge_checkpoint", str(run / "checkpoints" / "last.ckpt"), "--model.eval.fit_bridge", "false",
        "--model.eval.epsilon_source", "frozen", "--model.eval.report_dir", str(tmp_path / "report"),
        "--model.memory.dim", str(D), "--model.memory.pq_m", "8", "--model.memory.warm_max_items", "0", "--model.memory.nlist", "0",
        "--model.memory.hot_max_items", "1000"])
    assert summary["events"] == 160 and summary["queries"] > 0 and summary["duplicates_skipped"] == 0
    # the evaluator replays the trained bridge itself, frozen (a random tiny model has no semantics to
    # retrieve by: the recall figure is not the point here, the plumbing is)
    trained = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["bridge.W"]
    assert torch.equal(ecli.model.bridge.W, trained)
    assert len(ecli.model.memory) == 160


@pytest.mark.slow
def test_evaluate_replays_raw_webdataset_shards_and_encodes_on_the_fly(tmp_path):
    """evaluate.py --data.webdataset.urls: the webdataset library reads the tars in the replay, the
    evaluator encodes images and captions with the configured encoders (model.encoders +
    eval.media_keys) and a Procrustes bridge learns caption -> image on the stream."""
    from tiny_encoders import TINY_CLIP
    from wds_helpers import img2dataset_shards

    from evaluate import run_evaluation
    from luma_pl.encoders import OpenClipEncoder

    good = img2dataset_shards(tmp_path / "wds", shards=3, per_shard=14, marker=tmp_path / "pwned")
    ckpt = tmp_path / "tiny_clip.pt"
    torch.save(OpenClipEncoder(model_cfg=TINY_CLIP, precision="fp32").model.state_dict(), ckpt)
    enc = {"kind": "clip", "model_cfg": TINY_CLIP, "path": str(ckpt), "precision": "fp32"}
    summary, cli = run_evaluation([
        "--config", str(ROOT / "configs" / "eval_default.yaml"), "--data.webdataset.urls", str(tmp_path / "wds"),
        "--data.batch_size", "8", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--model.eval.item_space", "clip", "--model.eval.source_space", "clip_text",
        "--model.eval.query_space", "clip_text", "--model.eval.k", "5", "--model.eval.fresh_queries", "4",
        "--model.eval.old_queries", "4", "--model.eval.media_keys", json.dumps({"clip": "jpg", "clip_text": "txt"}),
        "--model.encoders", json.dumps({"clip": enc, "clip_text": enc}),
        "--model.eval.report_dir", str(tmp_path / "report"), "--model.bridge.d_s", str(D), "--model.bridge.d_c", str(D),
        "--model.bridge.refresh_every", "16", "--model.memory.dim", str(D), "--model.memory.pq_m", "8",
        "--model.memory.warm_max_items", "0", "--model.memory.nlist", "0", "--model.memory.hot_max_items", "1000"])
    assert summary["events"] == len(good) == 42 and summary["replay_events_skipped"] == 4
    assert not (tmp_path / "pwned").exists()
    assert int(cli.model.bridge.pairs_total) == 41 and len(cli.model.memory) == 42  # pairs encoded on the fly
    assert summary["queries"] > 0
