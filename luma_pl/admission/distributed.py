"""Cross-rank merges of the counters and batches, as tensors (no pickled objects cross ranks).

* ``allreduce_countmin``: Count-Min tables of disjoint streams sum (the sketch is linear).
* ``allgather_space_saving``: each rank's (labels, counts, errors) padded to a common length are
  all-gathered as int64 tensors and merged with ``space_saving_merge`` in rank order, so every
  rank computes the same merged summary (pruned to the capacity).
* ``allgather_rows``: variable-length (ids, rows) of every rank, concatenated in rank order (the
  admission callback runs the pipeline on the same global batch on every rank).
* ``agree``: all ranks hold the same integer (min == max after two all-reduces), else an error.

Every function is a collective: all ranks must call it, with 0 rows when they have none. With no
initialised process group they return the local value (one process).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from luma_pl.admission.heavy_hitters import space_saving_merge
from luma_pl.ranks import is_distributed


def _gather(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return out


def allreduce_countmin(table: np.ndarray) -> np.ndarray:
    """Sum of every rank's (depth, width) int64 table."""
    if not is_distributed():
        return np.asarray(table, np.int64).copy()
    t = torch.from_numpy(np.ascontiguousarray(table, np.int64)).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.numpy()


def allgather_space_saving(labels: np.ndarray, counts: np.ndarray, errors: np.ndarray, capacity: int
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merged summary of every rank's Space-Saving summary (identical on all ranks)."""
    mine = (np.asarray(labels, np.int64), np.asarray(counts, np.int64), np.asarray(errors, np.int64))
    if not is_distributed():
        return space_saving_merge([mine], capacity)
    sizes = [int(s) for s in _gather(torch.tensor([len(mine[0])], dtype=torch.int64))]
    width = max(sizes)
    packed = np.zeros((3, width), np.int64)
    for r, a in enumerate(mine):
        packed[r, : len(a)] = a
    parts = _gather(torch.from_numpy(packed))
    summaries = [tuple(p.numpy()[r, :n] for r in range(3)) for p, n in zip(parts, sizes, strict=True)]
    return space_saving_merge(summaries, capacity)


def allgather_rows(ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(all ids, all rows, offset of this rank's rows) concatenated in rank order."""
    ids = np.asarray(ids, np.int64)
    rows = np.asarray(rows, np.float32)
    if not is_distributed():
        return ids, rows, 0
    d = rows.shape[1]
    sizes = [int(s) for s in _gather(torch.tensor([len(ids)], dtype=torch.int64))]
    width = max(sizes)
    pid = np.zeros(width, np.int64)
    pid[: len(ids)] = ids
    prow = np.zeros((width, d), np.float32)
    prow[: len(rows)] = rows
    g_ids = _gather(torch.from_numpy(pid))
    g_rows = _gather(torch.from_numpy(prow))
    all_ids = np.concatenate([g.numpy()[:n] for g, n in zip(g_ids, sizes, strict=True)])
    all_rows = np.concatenate([g.numpy()[:n] for g, n in zip(g_rows, sizes, strict=True)])
    return all_ids, all_rows, int(sum(sizes[: dist.get_rank()]))


def agree(value: int, what: str) -> None:
    """Raise RuntimeError when ranks hold different values (a diverged replicated decision)."""
    if not is_distributed():
        return
    lo = torch.tensor([value], dtype=torch.int64)
    hi = lo.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if int(lo) != int(hi):
        raise RuntimeError(f"{what} differs across ranks (min {int(lo)} != max {int(hi)}): the replicated "
                           "state diverged; check that every rank runs the same config and thread count")
