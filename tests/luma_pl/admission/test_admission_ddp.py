"""Cross-rank merges on two gloo processes equal the same merges done in one process."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from luma_pl.admission import CounterConfig, HeavyHitterCounter, space_saving_merge

B = 16


def rank_stream(rank: int) -> np.ndarray:
    rng = np.random.default_rng(100 + rank)
    n = 3000 if rank == 0 else 1700  # unequal streams, overlapping label sets
    return (rng.zipf(1.4, n) % 300 + 50 * rank).astype(np.int64)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    from luma_pl.admission.distributed import (
        agree,
        allgather_rows,
        allgather_space_saving,
        allreduce_countmin,
    )
    from luma_pl.threads import limit_cpu_threads

    limit_cpu_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        s = rank_stream(rank)
        ss = HeavyHitterCounter(CounterConfig(policy="space_saving", capacity=B))
        ss.update(s)
        labs, cnt, err = allgather_space_saving(*ss.summary(), B)
        cm = HeavyHitterCounter(CounterConfig(policy="count_min", capacity=B, seed=5))
        cm.update(s)
        table = allreduce_countmin(cm.table)
        ids, rows, off = allgather_rows(np.arange(rank + 2) + 10 * rank, np.full((rank + 2, 3), rank, np.float32))
        agree(int(len(ids)), "gathered row count")
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), labs=labs, cnt=cnt, err=err, table=table, ids=ids,
                 rows=rows, off=off)
        dist.barrier()  # every collective done on both ranks before gloo is torn down
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_rank_merges_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    for k in ("labs", "cnt", "err", "table", "ids", "rows"):
        np.testing.assert_array_equal(r0[k], r1[k])  # every rank holds the same merged state
    # Space-Saving: the same merge in one process
    sums = []
    for rank in (0, 1):
        c = HeavyHitterCounter(CounterConfig(policy="space_saving", capacity=B))
        c.update(rank_stream(rank))
        sums.append(c.summary())
    labs, cnt, err = space_saving_merge(sums, B)
    np.testing.assert_array_equal(r0["labs"], labs)
    np.testing.assert_array_equal(r0["cnt"], cnt)
    np.testing.assert_array_equal(r0["err"], err)
    # ... and it keeps the guarantee over the union stream
    union = np.concatenate([rank_stream(0), rank_stream(1)])
    true = np.bincount(union)
    n = len(union)
    assert len(labs) <= B
    for lab, c in zip(labs.tolist(), cnt.tolist(), strict=True):
        assert true[lab] <= c <= true[lab] + n / B
    assert set(np.flatnonzero(true > n / B).tolist()) <= set(labs.tolist())
    # Count-Min: summed tables equal one sketch over the union stream
    one = HeavyHitterCounter(CounterConfig(policy="count_min", capacity=B, seed=5))
    one.update(union)
    np.testing.assert_array_equal(r0["table"], one.table)
    # rows gathered in rank order, offsets per rank
    assert r0["ids"].tolist() == [0, 1, 10, 11, 12] and int(r0["off"]) == 0 and int(r1["off"]) == 2


PD, PN = 16, 6  # prototypes test: dim, batches per rank


def _proto_batches(rank: int) -> list[dict]:
    import torch

    rng = np.random.default_rng(7 + rank)
    centers = np.random.default_rng(0).standard_normal((5, PD))
    out = []
    for b in range(PN):
        n = 20 + 3 * rank + b  # unequal batch sizes across ranks
        x = centers[rng.integers(0, 5, n)] + 0.3 * rng.standard_normal((n, PD))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        keys = [str(1000 * rank + 100 * b + i) for i in range(n)]
        out.append({"emb": {"v": torch.from_numpy(x)}, "has": {"v": torch.ones(n, dtype=torch.bool)}, "key": keys})
    return out


def _proto_memory():
    from luma_pl.memory import MemoryConfig, TieredMemory

    return TieredMemory(MemoryConfig(dim=PD, hot_max_items=64, warm_max_items=0, pq_m=4, hot_backend="flat"))


def _proto_run(rank: int, world: int, memory_factory, batches_by_rank: list[list[dict]]):
    """Feed HeavyHitterAdmission(prototypes) like a Trainer would; world=1 gets every rank's rows in
    rank order, batch by batch (what the all-gather gives each rank)."""
    from types import SimpleNamespace

    import torch

    from callbacks.heavy_hitter_admission import HeavyHitterAdmission

    cfg = {"mode": "prototypes", "prefilter": {"basis": "none"}, "cluster": {"m": 12},
           "counter": {"policy": "space_saving", "capacity": 6}, "upsert_interval": 40, "probe": 3}
    from luma_pl.stream import batch_ids
    from luma_pl.stream.runtime import StreamRuntime

    cb = HeavyHitterAdmission(cfg, space="v", log=False)
    runtime = StreamRuntime(memory_factory())
    module = SimpleNamespace(runtime=lambda: runtime, memory=runtime.memory)
    cb.setup(None, module, "fit")
    for b in range(PN):
        if world == 1:  # one process: the concatenated global batch
            parts = [batches_by_rank[r][b] for r in range(len(batches_by_rank))]
            batch = {"emb": {"v": torch.cat([p["emb"]["v"] for p in parts])},
                     "has": {"v": torch.cat([p["has"]["v"] for p in parts])}, "key": sum((p["key"] for p in parts), [])}
        else:
            batch = batches_by_rank[rank][b]
        runtime.ingest(batch_ids(batch), batch["emb"]["v"].numpy())  # what a bridge module's step does
        cb.on_train_batch_end(None, module, None, batch, b)
    return cb, module


def _proto_worker(rank, world, port, out_dir):
    from luma_pl.memory.sharded import ShardedMemory
    from luma_pl.threads import limit_cpu_threads

    limit_cpu_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        batches = [_proto_batches(r) for r in range(world)]
        cb, module = _proto_run(rank, world, lambda: ShardedMemory(_proto_memory()), batches)
        q = np.random.default_rng(3).standard_normal((8, PD)).astype(np.float32)
        ids, scores = cb.prototypes.search(q / np.linalg.norm(q, axis=1, keepdims=True), 5)  # a collective
        members = sorted((lab, i) for lab, m in cb.prototypes.members.items() for i, _ in m)
        np.savez(os.path.join(out_dir, f"proto{rank}.npz"), ids=ids, scores=scores, members=np.array(members),
                 local=len(module.memory.shard), stats=np.array(list(cb.prototypes.stats.values())))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_rank_prototypes_mode_equals_one_process(tmp_path):
    mp.spawn(_proto_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = np.load(tmp_path / "proto0.npz"), np.load(tmp_path / "proto1.npz")
    cb, module = _proto_run(0, 1, _proto_memory, [_proto_batches(0), _proto_batches(1)])
    q = np.random.default_rng(3).standard_normal((8, PD)).astype(np.float32)
    ids, scores = cb.prototypes.search(q / np.linalg.norm(q, axis=1, keepdims=True), 5)
    members = np.array(sorted((lab, i) for lab, m in cb.prototypes.members.items() for i, _ in m))
    for r in (r0, r1):  # every rank holds the one-process members and gives its answers
        np.testing.assert_array_equal(r["members"], members)
        np.testing.assert_array_equal(r["stats"], np.array(list(cb.prototypes.stats.values())))
        np.testing.assert_array_equal(r["ids"], ids)
        np.testing.assert_allclose(r["scores"], scores, rtol=1e-6)
    # the centroid memory is sharded: the two shards hold the one-process centroids between them
    assert int(r0["local"]) + int(r1["local"]) == len(module.memory) > 0
