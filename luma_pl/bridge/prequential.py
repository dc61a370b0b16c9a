"""Prequential (test-then-train) scores of a bridge on its own anchor stream.

Every anchor batch is first used to measure the current bridge, then to update it, so each pair
is scored by a bridge that has not yet seen it: the online learner's honest error over the
stream, as the streaming-learning literature evaluates online learners (Dawid's prequential
principle). For pair i of a batch, with bridged source ``m_i = bridge(s_i)`` (unit) and its
canonical anchor ``c_i``:

- the gallery is the batch's canonical anchors plus the last ``G`` canonical anchors of earlier
  batches (a ring, ``PrequentialScore``); the rank of c_i is
  ``r_i = 1 + #{x in gallery, x != c_i : m_i·x > m_i·c_i}`` (ties count in the pair's favour);
- per batch the sums ``n``, ``hits@k = #{r_i <= k}``, ``rr = Σ 1/r_i [r_i <= max k]`` and
  ``cos = Σ m_i·c_i`` are sum-mergeable (windows, ranks), and ``recall@k = hits@k / n``,
  ``mrr@K = rr / n``, ``cosine = cos / n``.

Early in the stream the ring is not yet full and the gallery smaller, so scores there are easier:
the gallery size is logged with them (``preq/gallery``). Under DDP each rank keeps its own ring
(of its own replay share) and the sums are all-reduced, so the logged rates are over every rank's
pairs.
"""

from __future__ import annotations

import torch

from luma_pl.ring import write_rows


def prequential_ranks(mapped: torch.Tensor, targets: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    """(n,) ranks of each ``targets[i]`` for ``mapped[i]`` among ``targets`` + ``ring`` (see module)."""
    scores = mapped @ targets.T  # (n, n); the own score is its diagonal, so it is compared at one rounding
    own = scores.diagonal().unsqueeze(1)
    better = (scores > own).sum(dim=1)  # the diagonal is never > itself
    if ring.shape[0]:
        better = better + (mapped @ ring.T > own).sum(dim=1)
    return better + 1


def prequential_sums(mapped: torch.Tensor, targets: torch.Tensor, ring: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    """float64 ``[n, hits@k for k in ks, rr (within max ks), cos]`` of one batch."""
    ranks = prequential_ranks(mapped, targets, ring)
    kmax = max(ks)
    rr = torch.where(ranks <= kmax, 1.0 / ranks.double(), torch.zeros((), dtype=torch.float64))
    return torch.stack([torch.tensor(float(len(ranks)), dtype=torch.float64),
                        *[(ranks <= k).sum().double() for k in ks], rr.sum(),
                        (mapped * targets).sum().double()])


class PrequentialScore:
    """The ring of earlier canonical anchors and the scoring of each batch before it is learned.

    ``gallery``: ring size G (earlier anchors kept as distractors); ``ks``: cut-offs."""

    def __init__(self, dim: int, gallery: int = 1024, ks: tuple[int, ...] = (1, 10)) -> None:
        self.gallery = int(gallery)
        self.ks = tuple(int(k) for k in ks)
        self.ring = torch.zeros(self.gallery, dim)
        self.filled = 0  # rows of the ring holding anchors
        self.pos = 0  # next row to overwrite

    def score(self, mapped: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sums of this batch against the ring as it is (``prequential_sums``); then ``push``."""
        ring = self.ring[: self.filled].to(device=mapped.device, dtype=mapped.dtype)
        return prequential_sums(mapped, targets.to(mapped.dtype), ring, self.ks)

    def push(self, targets: torch.Tensor) -> None:
        """Keep the batch's canonical anchors, the oldest ring rows overwritten first."""
        self.pos, self.filled = write_rows(self.ring, self.pos, self.filled, targets)

    def observe(self, mapped: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Test, then keep: this batch's sums against the ring as it was (``score``), then ``push``."""
        sums = self.score(mapped, targets)
        self.push(targets)
        return sums

    def rates(self, sums: torch.Tensor) -> dict[str, float]:
        """``recall@k``, ``mrr@K``, ``cosine`` from (all-reduced) sums; empty when n = 0."""
        n = float(sums[0])
        if n <= 0:
            return {}
        out = {f"recall@{k}": float(sums[1 + i]) / n for i, k in enumerate(self.ks)}
        out[f"mrr@{max(self.ks)}"] = float(sums[1 + len(self.ks)]) / n
        out["cosine"] = float(sums[2 + len(self.ks)]) / n
        return out

    def state_dict(self) -> dict:
        return {"ring": self.ring[: self.filled].clone(), "pos": self.pos, "filled": self.filled}

    def load_state_dict(self, state: dict) -> None:
        ring = state.get("ring")
        if not isinstance(ring, torch.Tensor) or ring.ndim != 2 or ring.shape[1] != self.ring.shape[1]:
            return  # an older checkpoint without the ring (or another dimension): start empty
        n = min(int(ring.shape[0]), self.gallery)
        self.ring[:n] = ring[:n]
        self.filled = n
        self.pos = int(state.get("pos", n)) % max(self.gallery, 1)
