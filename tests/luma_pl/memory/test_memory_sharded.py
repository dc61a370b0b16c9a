"""Sharded memory on two CPU processes (gloo): same answers as one unsharded memory."""

import os
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from callbacks.memory_checkpoint import MemoryCheckpoint
from luma_pl.memory import MemoryConfig, TieredMemory
from luma_pl.memory.sharded import ShardedMemory, shard_of, stable_hash

D, N, K = 16, 300, 7
CFG = dict(dim=D, hot_max_items=40, hot_max_bytes=1 << 20, warm_max_items=400, warm_max_bytes=1 << 22,
           nlist=1, pq_m=4, pq_nbits=4, train_points_per_centroid=100, ef_search=256, hnsw_m=8)


def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    q = rng.standard_normal((10, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), q


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    from luma_pl.threads import limit_cpu_threads

    limit_cpu_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, q = data()
        mem = ShardedMemory(TieredMemory(MemoryConfig(**CFG)))
        kept = mem.insert(np.arange(N), x)  # same batch on every rank: each keeps its share
        # ranks ask different numbers of queries (rank 1 asks none) to exercise padding
        mine = q if rank == 0 else q[:0]
        r = mem.search(mine, K)
        # MemoryCheckpoint: every rank's shard goes into rank 0's checkpoint; each rank gets its own back
        ckpt = {}
        MemoryCheckpoint().on_save_checkpoint(None, SimpleNamespace(memory=mem), ckpt)
        path = os.path.join(out_dir, "mem.ckpt")
        if rank == 0:
            torch.save(ckpt, path)
        dist.barrier()
        holder = SimpleNamespace(memory=ShardedMemory(TieredMemory(MemoryConfig(**CFG))))
        MemoryCheckpoint().on_load_checkpoint(None, holder, torch.load(path, weights_only=True))
        back = holder.memory.search(mine, K)
        same_ids = sorted(holder.memory.shard.ids[holder.memory.shard.keys_in(0)].tolist()) == sorted(
            mem.shard.ids[mem.shard.keys_in(0)].tolist())
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), ids=r.ids, scores=r.scores, tiers=r.tiers, kept=kept,
                 ids_back=back.ids, scores_back=back.scores, len_back=len(holder.memory.shard),
                 len_before=len(mem.shard), same_hot=same_ids)
        holder.memory.shard.close()
        mem.shard.close()
        dist.barrier()  # every collective done on both ranks before gloo is torn down
    finally:
        dist.destroy_process_group()


def test_hash_is_stable_and_balanced():
    assert stable_hash(np.array([0, 1, 2**40])).tolist() == stable_hash(np.array([0, 1, 2**40])).tolist()
    owners = shard_of(np.arange(10_000), 2)
    assert 0.45 < owners.mean() < 0.55


@pytest.mark.ddp
def test_two_rank_search_equals_unsharded(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert int(r0["kept"]) + int(r1["kept"]) == N and r1["ids"].shape == (0, K)
    x, q = data()
    single = TieredMemory(MemoryConfig(**CFG))
    single.insert(np.arange(N), x)
    ref = single.search(q, K)
    np.testing.assert_array_equal(r0["ids"], ref.ids)
    np.testing.assert_allclose(r0["scores"], ref.scores, rtol=1e-5)
    # brute force agrees too (the tiers are exact in this configuration)
    top = np.argsort(-(q @ x.T), axis=1)[:, :K]
    np.testing.assert_array_equal(ref.ids, top)
    single.close()
    # the checkpoint round trip gave each rank its own shard back: same sizes, same answers
    for r in (r0, r1):
        assert int(r["len_back"]) == int(r["len_before"]) > 0 and bool(r["same_hot"])
    np.testing.assert_array_equal(r0["ids_back"], r0["ids"])
    np.testing.assert_allclose(r0["scores_back"], r0["scores"], rtol=1e-6)
    # a 2-shard checkpoint does not load into a 1-process run
    holder = SimpleNamespace(memory=TieredMemory(MemoryConfig(**CFG)))
    with pytest.raises(ValueError, match="world size 1"):
        MemoryCheckpoint().on_load_checkpoint(None, holder, torch.load(tmp_path / "mem.ckpt", weights_only=True))
    holder.memory.close()
