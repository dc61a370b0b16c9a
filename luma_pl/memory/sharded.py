"""A TieredMemory sharded across torch.distributed ranks (gloo on CPU, nccl on GPU).

Each rank owns the ids whose stable hash (splitmix64, identical on every machine and run, unlike
Python's salted ``hash``) lands on it. ``insert`` may be called with the same batch on every rank (each
keeps its share) or with different batches (each keeps its share of its own batch). ``search`` is a
collective: every rank's queries are all-gathered, every rank searches all of them in its shard, and
the (ids, scores, tiers, zeta) of all shards are all-gathered and merged into each rank's top-k.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.distributed as dist

from luma_pl.memory.tiered import SearchResult, TieredMemory, pad_result


def stable_hash(ids: np.ndarray) -> np.ndarray:
    """splitmix64 of int64 ids -> uint64, the same everywhere."""
    with np.errstate(over="ignore"):
        z = np.asarray(ids, dtype=np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def shard_of(ids: np.ndarray, world_size: int) -> np.ndarray:
    """(n,) rank that owns each id."""
    return (stable_hash(ids) % np.uint64(world_size)).astype(np.int64)


def allgather_bytes(blob: np.ndarray, group=None) -> list[np.ndarray]:
    """Every rank's (n,) uint8 buffer, in rank order (lengths may differ). A collective; CPU tensors,
    so under NCCL it needs the mixed 'cpu:gloo,cuda:nccl' process group that ClosedFormDDPStrategy
    sets up."""
    world = dist.get_world_size(group)
    blob = np.ascontiguousarray(blob, np.uint8)
    sizes = [torch.empty(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(blob)], dtype=torch.int64), group=group)
    width = max(int(s) for s in sizes)
    padded = np.zeros(width, np.uint8)
    padded[: len(blob)] = blob
    out = [torch.empty(width, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(out, torch.from_numpy(padded), group=group)
    return [o.numpy()[: int(n)].copy() for o, n in zip(out, sizes, strict=True)]


class ShardedMemory:
    """One memory over the ranks of a process group: rank r holds the ids with ``shard_of(id) == r``
    in its own ``TieredMemory`` (``shard``). The Memory protocol as ``TieredMemory`` has it:
    ``insert`` / ``evict`` / ``promote`` / ``demote`` keep or act on this rank's share (not
    collectives: every rank passes the same ids), ``search`` and ``len`` are collectives,
    ``distributed`` is True (this rank's ``shard`` lacks the other ranks' vectors)."""

    distributed = True

    def __init__(self, local: TieredMemory, group=None):
        self.shard = local
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self._warned_k_clamp = False  # search(k > live items) warns once per memory

    @property
    def cfg(self):
        return self.shard.cfg

    @property
    def dim(self) -> int:
        return self.shard.dim

    def hot_capacity(self) -> int:
        """Most items this rank's empty hot tier holds."""
        return self.shard.hot_capacity()

    def promote(self, ids) -> int:
        """Promote this rank's share of ``ids``; return how many. Not a collective."""
        ids = np.asarray(ids, np.int64)
        mine = self.owns(ids)
        if mine.any():
            self.shard.promote(ids[mine])
        return int(mine.sum())

    def demote(self, ids) -> int:
        """Demote this rank's share of ``ids``; return how many. Not a collective."""
        ids = np.asarray(ids, np.int64)
        mine = self.owns(ids)
        if mine.any():
            self.shard.demote(ids[mine])
        return int(mine.sum())

    def __len__(self) -> int:
        """Live items over all shards. A collective (one all-reduce): every rank must call it."""
        n = torch.tensor([len(self.shard)], dtype=torch.int64)
        dist.all_reduce(n, group=self.group)
        return int(n.item())

    def owns(self, ids) -> np.ndarray:
        return shard_of(np.asarray(ids), self.world) == self.rank

    def insert(self, ids, vectors, **kwargs) -> int:
        """Keep this rank's share of the batch; return how many it kept. Not a collective."""
        ids = np.asarray(ids)
        mine = self.owns(ids)
        if mine.any():
            per_item = {k: np.asarray(v)[mine] for k, v in kwargs.items() if k in ("hot", "labels") and v is not None}
            self.shard.insert(ids[mine], np.asarray(vectors)[mine], **{**kwargs, **per_item})
        return int(mine.sum())

    def evict(self, ids) -> int:
        """Evict this rank's share of ``ids`` (each must be live on its owner); return how many it
        evicted. Not a collective."""
        ids = np.asarray(ids)
        mine = self.owns(ids)
        if mine.any():
            self.shard.evict(ids[mine])
        return int(mine.sum())

    def _all_gather(self, t: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t, group=self.group)
        return torch.stack(out)  # (world, *t.shape)

    def search(self, queries, k: int, oversample: int | None = None, rescore: bool = True,
               record_hits: bool = True) -> SearchResult:
        """Collective: every rank must call it (with 0 queries if it has none).

        k above the live items is clamped as in ``TieredMemory.search`` (one warning per memory,
        naming the total over all shards): each shard searches min(k, its own live items) and pads to
        the widest shard's width ``kw``, so the gathered buffers are (world, world*Q, kw), not k wide;
        the merged top is padded back to k columns (id -1, score -inf, tier -1, zeta 0)."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k={k!r} is invalid; ask for k >= 1 results")
        k = int(k)
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.shard.cfg.dim))
        # one gather of (queries, live items) per rank: the query padding and the clamped width
        sizes = self._all_gather(torch.tensor([len(q), len(self.shard)], dtype=torch.int64)).view(-1, 2)
        counts, lives = sizes[:, 0].tolist(), sizes[:, 1].tolist()
        total = sum(lives)
        if k > total and not self._warned_k_clamp:
            self._warned_k_clamp = True
            warnings.warn(f"search k={k} exceeds the {total} live items in this sharded memory; searching "
                          f"with k={total} and padding the other columns with id -1 / score -inf. Pass "
                          "k <= len(memory) (this warning is shown once per memory)", stacklevel=2)
        kw = max(1, max(min(k, n) for n in lives))  # every shard's answer is this wide after padding
        qmax = max(counts)
        padded = np.zeros((qmax, q.shape[1]), dtype=np.float32)
        padded[: len(q)] = q
        every = self._all_gather(torch.from_numpy(padded)).view(-1, q.shape[1]).numpy()  # (world*qmax, d)
        res = None
        if qmax:
            every, os_ = self.shard._search_args(every, oversample)
            res = self.shard._search_clamped(every, kw, os_, rescore, record_hits, warn=False)
        shape = (self.world * qmax, kw)
        ids = res.ids if res else np.empty(shape, np.int64)
        scores = res.scores if res else np.empty(shape, np.float32)
        tiers = res.tiers.astype(np.int64) if res else np.empty(shape, np.int64)
        zeta = res.zeta if res else np.empty(shape, np.float32)
        zmax = res.zeta_max if res else self.shard.zeta_max
        floor = res.pq_floor if res is not None and res.pq_floor is not None else np.full(self.world * qmax, -np.inf, np.float32)
        # gather every shard's answers: (world shards, world*qmax queries, kw)
        g_ids = self._all_gather(torch.from_numpy(np.ascontiguousarray(ids))).numpy()
        g_sc = self._all_gather(torch.from_numpy(np.ascontiguousarray(scores))).numpy()
        g_ti = self._all_gather(torch.from_numpy(np.ascontiguousarray(tiers))).numpy()
        g_ze = self._all_gather(torch.from_numpy(np.ascontiguousarray(zeta))).numpy()
        g_zm = self._all_gather(torch.tensor([zmax], dtype=torch.float64)).view(-1).numpy()
        g_fl = self._all_gather(torch.from_numpy(np.ascontiguousarray(floor, np.float32))).numpy()  # (world, world*qmax)
        mine = slice(self.rank * qmax, self.rank * qmax + len(q))

        def own(a):  # (world, world*qmax, kw) -> this rank's queries, shards side by side: (Q, world*kw)
            return np.concatenate(list(a[:, mine]), axis=1)

        sc, ii, ti, ze = own(g_sc), own(g_ids), own(g_ti), own(g_ze)
        top = np.argsort(-sc, axis=1, kind="stable")[:, :k]
        take = lambda a: np.take_along_axis(a, top, 1)  # noqa: E731
        # an item no shard returned is bounded by its own shard's floor: the highest one bounds all
        pq_floor = g_fl[:, mine].max(axis=0).astype(np.float32) if rescore else None
        return pad_result(SearchResult(take(ii), take(sc).astype(np.float32), take(ti).astype(np.int8),
                                       take(ze).astype(np.float32), float(g_zm.max()), pq_floor), k)
