"""Deterministic batch plan for a replay: which shards each worker reads, how many batches it yields.

Computed from the manifest alone, identically on every rank, so no collective is needed to agree
on the epoch length. Global worker ``g = rank * k + w`` (``k`` DataLoader workers per rank, 1 when
``num_workers=0``) reads shards ``g, g + W, g + 2W, ...`` with ``W = world_size * k``: round-robin
keeps all workers at roughly the same stream time (contiguous ranges would put rank 1 in the
middle of the stream while rank 0 is at its start).

Each worker plans ``ceil(events / batch_size)`` real batches (floor with ``drop_last``); each rank's
sum is padded up to the maximum over ranks with B=0 ``padding`` batches, spread water-filling over
that rank's workers so that their totals stay as even as possible.
"""

from __future__ import annotations

from dataclasses import dataclass

from .shard_format import Manifest


@dataclass(frozen=True)
class ReplayPlan:
    """The plan for all ranks. Index as ``[rank][worker]``."""

    world_size: int
    workers: int
    """Workers per rank ``k`` (1 when the DataLoader has ``num_workers=0``)."""
    shards: tuple[tuple[tuple[int, ...], ...], ...]
    """Shard indices (into ``manifest.shards``) per rank and worker, in stream order."""
    real: tuple[tuple[int, ...], ...]
    """Batches built from data per rank and worker (if data runs short, padding replaces them)."""
    pad: tuple[tuple[int, ...], ...]
    """Padding batches appended per rank and worker."""

    def total(self, rank: int, worker: int) -> int:
        return self.real[rank][worker] + self.pad[rank][worker]

    def rank_batches(self, rank: int) -> int:
        """Batches rank ``rank`` yields per pass; equal for every rank."""
        return sum(self.total(rank, w) for w in range(self.workers))


def plan_replay(manifest: Manifest, world_size: int, num_workers: int, batch_size: int,
                drop_last: bool = False) -> ReplayPlan:
    """Build the plan; raises ``ValueError`` when there are fewer shards than workers in total."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1, e.g. 256")
    if num_workers < 0:
        raise ValueError(f"num_workers={num_workers} must be >= 0")
    k = max(num_workers, 1)
    n_workers = world_size * k
    n_shards = len(manifest.shards)
    if n_shards < n_workers:
        raise ValueError(
            f"{n_shards} shard(s) for world_size={world_size} x num_workers={k} = {n_workers} readers: "
            f"every reader needs at least one shard; write at least {n_workers} shards "
            "(smaller events_per_shard) or lower num_workers"
        )
    shards, real = [], []
    for r in range(world_size):
        rs, rr = [], []
        for w in range(k):
            idx = tuple(range(r * k + w, n_shards, n_workers))
            events = sum(manifest.shards[i].events for i in idx)
            rs.append(idx)
            rr.append(events // batch_size if drop_last else -(-events // batch_size))
        shards.append(tuple(rs))
        real.append(tuple(rr))
    target = max(sum(rr) for rr in real)
    pad = []
    for rr in real:
        totals, p = list(rr), [0] * k
        for _ in range(target - sum(rr)):  # water-filling: pad the worker with the fewest batches
            w = min(range(k), key=lambda i: (totals[i], i))
            totals[w] += 1
            p[w] += 1
        pad.append(tuple(p))
    return ReplayPlan(world_size, k, tuple(shards), tuple(real), tuple(pad))


def dataloader_order(totals: list[int], start: int = 0) -> list[int]:
    """Worker index of each batch, in the order PyTorch's DataLoader returns them.

    The DataLoader asks its workers in a fixed cycle and drops an exhausted worker from the
    rotation, so the order is round-robin over the workers that still have batches. ``start``
    rotates the cycle (used after a resume, see ``resume_split``).
    """
    k = len(totals)
    left = list(totals)
    out: list[int] = []
    w = start % k if k else 0
    while any(left):
        if left[w]:
            out.append(w)
            left[w] -= 1
        w = (w + 1) % k
    return out


def resume_split(totals: list[int], consumed: int) -> tuple[list[int], int]:
    """Per-worker batches to skip after ``consumed`` batches, and the worker the tail starts with.

    Returns ``(skip, start)``: worker ``w`` skips ``skip[w]`` batches; the resumed DataLoader's
    physical worker ``p`` must play logical worker ``(p + start) % k`` so that its fresh
    round-robin (which always starts at physical worker 0) continues the original cycle.
    """
    k = len(totals)
    if not 0 <= consumed <= sum(totals):
        raise ValueError(
            f"consumed={consumed} batches is outside [0, {sum(totals)}] for this plan; the shards or "
            "num_workers/world_size/batch_size changed since the checkpoint; resume with the same settings"
        )
    order = dataloader_order(totals)
    skip = [0] * k
    for w in order[:consumed]:
        skip[w] += 1
    start = (order[consumed - 1] + 1) % k if consumed else 0
    return skip, start
