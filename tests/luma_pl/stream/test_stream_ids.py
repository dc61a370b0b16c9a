"""One id per event: the replay computes it, training (HeavyHitterAdmission) and evaluation
(StreamEvaluator / evaluate.py) insert the same id for the same event key, in any process."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from callbacks.heavy_hitter_admission import HeavyHitterAdmission
from data_modules import StreamReplayDataModule, write_blocks
from luma_pl.modules import ProcrustesBridgeModule
from luma_pl.stream import batch_ids, event_ids

ROOT = Path(__file__).resolve().parents[3]
D, N = 24, 192
KEYS = [f"clip/{i:05d}" for i in range(N)]  # not int-parseable: one id function for any key


def test_event_ids_definition_and_range():
    ids = event_ids(["a", "a", "b", "ü-κ"])
    want = [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") & (2**62 - 1)
            for k in ["a", "a", "b", "ü-κ"]]
    assert ids.dtype == np.int64 and ids.tolist() == want
    assert ids[0] == ids[1] != ids[2] and (ids >= 0).all()
    assert len(np.unique(event_ids(KEYS))) == N
    assert batch_ids({"key": ["a", "b"]}).tolist() == [want[0], want[2]]
    assert batch_ids({"key": ["x"], "id": torch.tensor([7])}).tolist() == [7]  # the replay's id wins
    with pytest.raises(TypeError, match="keys\\[0\\]"):
        event_ids([3])


def test_event_ids_are_the_same_in_another_process_and_hash_seed():
    code = "from luma_pl.stream import event_ids; print(event_ids(['a', 'clip/00007']).tolist())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(event_ids(["a", "clip/00007"]).tolist())


def _shards(folder):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    write_blocks(folder, keys=KEYS, ts=np.arange(N), emb={"src": x[:, :16].copy(), "dst": x, "query_src": x[:, :16].copy()},
                 block_events=32, events_per_shard=64)


def test_train_and_evaluate_insert_the_same_id_for_the_same_key(tmp_path):
    _shards(tmp_path / "shards")
    want = set(event_ids(KEYS).tolist())
    # the replay batch carries the ids
    dm = StreamReplayDataModule(root=str(tmp_path / "shards"), batch_size=40)
    dm.setup("fit")
    seen = [i for b in dm.train_dataloader() for i in b["id"].tolist()]
    assert seen == event_ids(KEYS).tolist()
    # training: admission inserts every arrival (no prefilter, budgets hold all) under its event id
    model = ProcrustesBridgeModule(bridge={"d_s": 16, "d_c": D, "refresh_every": 32},
                                   module={"source_space": "src", "canonical_space": "dst", "query_space": "query_src",
                                           "item_space": "dst"},
                                   memory={"dim": D, "hot_max_items": N, "hot_max_bytes": 1 << 22, "warm_max_items": N,
                                           "warm_max_bytes": 1 << 22, "nlist": 2, "pq_m": 4, "pq_nbits": 4, "hnsw_m": 8})
    adm = HeavyHitterAdmission({"prefilter": {"basis": "none"}, "cluster": {"m": 8},
                                "counter": {"policy": "space_saving", "capacity": 4}}, space="dst", log=False)
    Trainer(max_epochs=1, accelerator="cpu", logger=False, limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[adm]).fit(model, datamodule=StreamReplayDataModule(
                root=str(tmp_path / "shards"), batch_size=40))
    trained = set(model.memory.ids[: model.memory.num_keys].tolist())
    assert trained == want
    # evaluation: evaluate.py on the same shards holds the same ids
    from evaluate import run_evaluation

    _, cli = run_evaluation([
        "--data.root", str(tmp_path / "shards"), "--data.batch_size", "40", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.enable_checkpointing", "false", "--trainer.logger", "false",
        "--model.eval.item_space", "dst", "--model.eval.source_space", "src", "--model.eval.query_space", "query_src",
        "--model.eval.k", "3", "--model.eval.report_dir", str(tmp_path / "report"),
        "--model.bridge.d_s", "16", "--model.bridge.d_c", str(D), "--model.bridge.refresh_every", "32",
        "--model.memory.dim", str(D), "--model.memory.pq_m", "4", "--model.memory.hot_backend", "flat",
        "--model.memory.hot_max_items", "100000", "--model.memory.warm_max_items", "0"])
    mem = cli.model.memory
    assert set(mem.ids[: mem.num_keys].tolist()) == want
