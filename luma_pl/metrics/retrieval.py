"""torchmetrics classes over ``functional.per_query``: state = (sum of per-query values, count).

Both states reduce with ``sum``, so chunks of queries, batches and ranks merge exactly: the mean
over all queries is ``total / count`` whatever the split.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from luma_pl.metrics import functional as F


class RetrievalAtK(Metric):
    """Base: ``update(scores (Q, I), relevance (Q, I))``; ``compute()`` -> mean over counted queries."""

    metric: str = ""
    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int = 10, empty_target: str = "zero", **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r} must be a positive int, e.g. k=10")
        if empty_target not in F.EMPTY_ACTIONS:
            raise ValueError(f"empty_target={empty_target!r}: use one of {F.EMPTY_ACTIONS}")
        self.k = k
        self.empty_target = empty_target
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, relevance: torch.Tensor) -> None:
        val, counted = F.per_query(self.metric, scores.detach().cpu(), relevance.detach().cpu(), self.k, self.empty_target)
        self.total += val[counted].sum().to(self.total.device)
        self.count += float(counted.sum())

    def compute(self) -> torch.Tensor:
        if float(self.count) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.total.device)
        return self.total / self.count


class HitRateAtK(RetrievalAtK):
    """HitRate@k: share of queries with at least one relevant item in the top k."""

    metric = "hit_rate"


class RecallAtK(RetrievalAtK):
    """True Recall@k: |top-k ∩ relevant| / |relevant|, averaged over queries."""

    metric = "recall"


class MRRAtK(RetrievalAtK):
    """MRR@k: reciprocal rank of the first relevant item within the top k (0 beyond)."""

    metric = "mrr"


class NDCGAtK(RetrievalAtK):
    """nDCG@k with the ideal DCG from all relevant items."""

    metric = "ndcg"


CLASSES = {"hit_rate": HitRateAtK, "recall": RecallAtK, "mrr": MRRAtK, "ndcg": NDCGAtK}


def build(names: tuple[str, ...] = ("recall", "mrr", "ndcg", "hit_rate"), ks: tuple[int, ...] = (1, 10)) -> dict[str, RetrievalAtK]:
    """``{"recall@10": RecallAtK(10), ...}`` for every name x k."""
    out = {}
    for name in names:
        if name not in CLASSES:
            raise ValueError(f"metric name {name!r}: use one of {sorted(CLASSES)}")
        for k in ks:
            out[f"{name}@{k}"] = CLASSES[name](k=k)
    return out
