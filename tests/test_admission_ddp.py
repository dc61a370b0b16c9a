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
