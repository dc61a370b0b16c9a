"""StreamReplayDataModule: equal batch counts across ranks, every event once, exact resume.

Run as a script (``python tests/data_modules/test_replay.py ROOT OUT WORKERS``) it is the body of the real
Lightning ``Trainer(strategy='ddp', accelerator='cpu', devices=2)`` test: Lightning's launcher
re-executes the same command line for rank 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import lightning.pytorch as pl  # noqa: E402

from data_modules import ReplayConfig, ShardSetWriter, StreamReplayDataModule, StreamReplayDataset  # noqa: E402
from data_modules.replay_plan import dataloader_order, plan_replay, resume_split  # noqa: E402
from data_modules.shard_format import load_manifest  # noqa: E402
from data_modules.stream_replay import replay_dataloader  # noqa: E402
from luma_pl.threads import limit_cpu_threads  # noqa: E402

limit_cpu_threads()
SIZES = (7, 1, 13, 4, 9, 2, 11)  # deliberately uneven events per shard


def make_uneven_shards(root: Path, sizes=SIZES, block_every: int = 2) -> list[str]:
    """Shards of the given event counts; every ``block_every``-th shard is one block sample."""
    rng = np.random.default_rng(0)
    keys, i = [], 0
    with ShardSetWriter(root, "uneven", events_per_shard=10**9) as w:
        for s, n in enumerate(sizes):
            w._close_current()  # noqa: SLF001 - one shard per entry of sizes
            ks = [f"s{s}e{j}" for j in range(n)]
            vec = rng.standard_normal((n, 5)).astype(np.float32)
            if s % block_every == 0:
                w.write_block(keys=ks, ts=np.arange(i, i + n), emb={"v": vec}, topics=[f"t{s}"] * n,
                              texts={"txt": ks})
            else:
                for j, k in enumerate(ks):
                    w.write_event(ts=i + j, key=k, topic=f"t{s}", emb={"v": vec[j]}, media={"txt": k})
            keys += ks
            i += n
    assert [s.events for s in load_manifest(root).shards] == list(sizes)
    return keys


def loader_batches(root, rank=0, world=1, workers=0, batch_size=3, resume=0):
    ds = StreamReplayDataset(ReplayConfig(root=str(root), batch_size=batch_size, num_workers=workers),
                             rank, world, resume_batches=resume)
    dl = replay_dataloader(ds)
    out = list(dl)
    assert len(out) == len(ds) - resume == ds.batches_per_pass() - resume
    return out


def sig(b: dict) -> tuple:
    return (tuple(b["key"]), tuple(b["ts"].tolist()), b["padding"], b["skipped"])


def test_plan_counts_equal_and_cover_all_shards():
    from data_modules.shard_format import Manifest, ShardInfo

    rng = np.random.default_rng(5)
    for _ in range(50):
        n_shards = int(rng.integers(4, 20))
        m = Manifest([ShardInfo(f"x-{i:06d}.tar", int(rng.integers(0, 50))) for i in range(n_shards)])
        world, k = int(rng.integers(1, 3)), int(rng.integers(0, 3))
        if n_shards < world * max(k, 1):
            continue
        plan = plan_replay(m, world, k, int(rng.integers(1, 9)))
        assert len({plan.rank_batches(r) for r in range(world)}) == 1
        assert sorted(i for r in plan.shards for w in r for i in w) == list(range(n_shards))
    with pytest.raises(ValueError, match="world_size=2 x num_workers=2 = 4 readers"):
        plan_replay(Manifest([ShardInfo("a", 1)] * 3), 2, 2, 4)


def test_dataloader_order_and_resume_split():
    assert dataloader_order([1, 3, 2]) == [0, 1, 2, 1, 2, 1]
    skip, start = resume_split([1, 3, 2], 4)
    assert skip == [1, 2, 1] and start == 2
    with pytest.raises(ValueError, match="consumed=7"):
        resume_split([1, 3, 2], 7)


@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_equal_counts_every_event_once(tmp_path, workers):
    keys = make_uneven_shards(tmp_path)
    per_rank = [loader_batches(tmp_path, r, 2, workers) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1])
    assert any(b["padding"] for bs in per_rank for b in bs)  # uneven shards force padding
    seen = [k for bs in per_rank for b in bs for k in b["key"]]
    assert sorted(seen) == sorted(keys) and len(seen) == len(keys)
    for bs in per_rank:  # contract shapes, padding rows are empty
        for b in bs:
            n = len(b["key"])
            assert b["ts"].shape == (n,) and b["emb"]["v"].shape == (n, 5) and b["has"]["v"].shape == (n,)
            assert len(b["topic"]) == n and len(b["media"]["txt"]) == n and b["media"]["txt"] == b["key"]
            assert (n == 0) == b["padding"]


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_resume_equals_tail(tmp_path, workers):
    make_uneven_shards(tmp_path)
    full = [sig(b) for b in loader_batches(tmp_path, 1, 2, workers)]
    for n in sorted({0, 1, 2, len(full) // 2, len(full) - 1, len(full)}):
        tail = [sig(b) for b in loader_batches(tmp_path, 1, 2, workers, resume=n)]
        assert tail == full[n:], f"resume after {n} batches with {workers} workers"


class _Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.keys: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.keys.append(list(batch["key"]))
        # 0-row padding still joins DDP's gradient all-reduce
        return (self.w * batch["emb"]["v"].sum()).sum() + self.w.sum() * 0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _trainer(**kw) -> pl.Trainer:
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      max_epochs=1, **kw)


def test_lightning_checkpoint_resume_skips_consumed(tmp_path):
    root = tmp_path / "shards"
    make_uneven_shards(root)
    n = 4
    dm, model = StreamReplayDataModule(str(root), batch_size=3, num_workers=2), _Recorder()
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=n, save_top_k=-1,
                                           filename="{step}")
    _trainer(devices=1, enable_checkpointing=True, callbacks=[ckpt_cb]).fit(model, dm)
    full = model.keys
    assert len(full) == dm.dataset.batches_per_pass() and dm.skipped_total == 0
    assert dm.batches_consumed == 0 and dm.events_seen == sum(SIZES)  # a full pass resets the counter
    state = torch.load(tmp_path / "ck" / f"step={n}.ckpt", weights_only=True)["StreamReplayDataModule"]
    assert state["batches_consumed"] == n  # counted at step time, not at Lightning's prefetch
    dm2, m2 = StreamReplayDataModule(str(root), batch_size=3, num_workers=2), _Recorder()
    _trainer(devices=1).fit(m2, dm2, ckpt_path=str(tmp_path / "ck" / f"step={n}.ckpt"))
    assert m2.keys == full[n:]


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize("workers", [1])
def test_ddp_trainer_equal_counts_every_event_once(tmp_path, workers):
    root, out = tmp_path / "shards", tmp_path / "out"
    keys = make_uneven_shards(root)
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), LUMA_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, str(root), str(out), str(workers)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["batches"] == ranks[1]["batches"] > 0
    assert ranks[0]["world_size"] == 2
    seen = [k for r in ranks for b in r["keys"] for k in b]
    assert sorted(seen) == sorted(keys) and len(seen) == len(keys)


def _ddp_main(root: str, out: str, workers: int) -> None:
    dm, model = StreamReplayDataModule(root, batch_size=3, num_workers=workers), _Recorder()
    trainer = _trainer(devices=2, strategy="ddp")
    trainer.fit(model, dm)
    rec = {"batches": len(model.keys), "keys": model.keys, "world_size": trainer.world_size,
           "skipped": dm.skipped_total}
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(rec))


if __name__ == "__main__":
    _ddp_main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
