"""kill -9 in the middle of `train.py fit`, resume from the last stream checkpoint: the final bridge
and memory equal those of an uninterrupted run (docs/design.md: no admitted item lost, exact resume)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.shard_writer import write_blocks

ROOT = Path(__file__).resolve().parents[1]


def _shards(folder: Path, n: int = 768, d_s: int = 16, d_c: int = 24) -> None:
    rng = np.random.default_rng(0)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    s = unit(rng.standard_normal((n, d_s)))
    q, _ = np.linalg.qr(rng.standard_normal((d_c, d_s)))
    c = unit(s @ q.T + 0.3 * rng.standard_normal((n, d_c)))
    write_blocks(folder, keys=[f"{i:07d}" for i in range(n)], ts=np.arange(n),
                 emb={"wordllama": s, "minilm": c, "query_wordllama": unit(s + 0.1 * rng.standard_normal(s.shape)),
                      "query_minilm": c}, block_events=64, events_per_shard=256)


def _fit(shards: Path, run: Path, extra: list[str]) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "default.yaml"),
            "--data.root", str(shards), "--data.batch_size", "32",
            "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(run),
            "--model.init_args.bridge.d_s", "16", "--model.init_args.bridge.d_c", "24",
            "--model.init_args.bridge.refresh_every", "64",
            "--model.init_args.memory.dim", "24", "--model.init_args.memory.pq_m", "8",
            "--model.init_args.memory.hot_max_items", "200", "--model.init_args.memory.warm_max_items", "400",
            "--model.init_args.memory.nlist", "4",
            "--trainer.callbacks.dirpath", str(run / "checkpoints"), *extra]
    env = dict(os.environ, LUMA_NUM_THREADS="1", WANDB_MODE="offline", PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}")
    env.pop("WANDB_SERVICE", None)  # a child attached to this process's W&B service writes its run late
    return subprocess.run(args, cwd=run.parent, env=env, capture_output=True, text=True, timeout=400)


def _final_state(ckpt: Path) -> dict:
    c = torch.load(ckpt, map_location="cpu", weights_only=True)
    mem = c["luma_memory"]["arrays"]
    return {"W": c["state_dict"]["bridge.W"], "pairs": c["state_dict"]["bridge.pairs_total"],
            "memory": {k: v.clone() for k, v in mem.items()},
            "consumed": c["StreamReplayDataModule"]["events_seen"],
            "callbacks": {k: v for k, v in c["callbacks"].items() if k.startswith(("HeavyHitter", "TierMigration"))}}


@pytest.mark.slow
def test_kill9_mid_fit_then_resume_equals_uninterrupted(tmp_path):
    _shards(tmp_path / "shards")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    full = _fit(tmp_path / "shards", tmp_path / "a", [])
    assert full.returncode == 0, full.stderr[-3000:]

    # StreamCheckpoint writes every 2 batches; the kill lands at batch 11 (after the batch-10 checkpoint)
    killed = _fit(tmp_path / "shards", tmp_path / "b", ["--trainer.callbacks+=kill_switch.KillAtBatch",
                                                        "--trainer.callbacks.batch", "11"])
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    mid = torch.load(last, map_location="cpu", weights_only=True)
    assert mid["callbacks"]["StreamCheckpoint"]["batches"] == 10
    resumed = _fit(tmp_path / "shards", tmp_path / "b", ["--ckpt_path", str(last)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = _final_state(tmp_path / "a" / "checkpoints" / "last.ckpt")
    b = _final_state(last)
    assert int(a["pairs"]) == int(b["pairs"]) == 768
    torch.testing.assert_close(a["W"], b["W"], atol=1e-12, rtol=0)
    assert a["consumed"] == b["consumed"] == 768
    assert a["memory"].keys() == b["memory"].keys()
    for k in a["memory"]:
        torch.testing.assert_close(a["memory"][k], b["memory"][k], atol=0, rtol=0, msg=lambda m, k=k: f"memory[{k}]: {m}")
    _assert_same(a["callbacks"], b["callbacks"], "callbacks")


def _assert_same(x, y, path: str) -> None:
    """Recursive equality over dicts / lists / tensors / arrays / primitives."""
    if isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys(), path
        for k in x:
            _assert_same(x[k], y[k], f"{path}.{k}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            _assert_same(u, v, f"{path}[{i}]")
    elif isinstance(x, (torch.Tensor, np.ndarray)):
        torch.testing.assert_close(torch.as_tensor(x), torch.as_tensor(y), atol=0, rtol=0, msg=path)
    else:
        assert x == y or (x != x and y != y), f"{path}: {x!r} != {y!r}"
