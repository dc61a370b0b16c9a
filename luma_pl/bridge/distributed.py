"""Collectives the bridges need, correct for uneven (including empty) per-rank batches.

``gather_rows`` concatenates every rank's rows ``(n_r, d)`` into ``(sum_r n_r, d)`` in rank
order. With ``with_grad`` it uses ``torch.distributed.nn.functional.all_gather``, whose backward
sums every rank's gradient for a row back into the rank that produced it (so negatives from other
ranks still train this rank's parameters, as open_clip's ``gather_with_grad``). Works on gloo.
Without a process group (or world size 1) it returns the input unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from luma_pl.ranks import world_size


def gather_rows(x: torch.Tensor, with_grad: bool = False, group=None) -> tuple[torch.Tensor, int, list[int]]:
    """``x`` (n_r, d) -> ``(all_rows (N, d), this rank's first row, sizes per rank)``. A collective."""
    world = world_size(group)
    if world == 1:
        return x, 0, [x.shape[0]]
    rank = dist.get_rank(group)
    n = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    sizes_t = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes_t, n, group=group)
    sizes = [int(t) for t in sizes_t]
    # all_gather needs equal shapes: pad every rank to the largest batch, cut the padding after
    pad_to = max(sizes)
    padded = torch.cat([x, x.new_zeros(pad_to - x.shape[0], *x.shape[1:])]) if pad_to > x.shape[0] else x
    if with_grad:
        from torch.distributed.nn.functional import all_gather

        parts = list(all_gather(padded.contiguous(), group=group))
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous(), group=group)
        parts[rank] = padded  # keep the local slot in the autograd graph (open_clip's trick)
    rows = torch.cat([p[:k] for p, k in zip(parts, sizes, strict=False)])
    return rows, sum(sizes[:rank]), sizes
