"""Retrieval metrics: ``functional`` (pure, per query) and torchmetrics classes in ``retrieval``."""

from luma_pl.metrics.functional import hit_rate, mrr, ndcg, per_query, recall, relevance_from_sets
from luma_pl.metrics.retrieval import HitRateAtK, MRRAtK, NDCGAtK, RecallAtK, RetrievalAtK, build

__all__ = [
    "HitRateAtK", "MRRAtK", "NDCGAtK", "RecallAtK", "RetrievalAtK", "build",
    "hit_rate", "mrr", "ndcg", "per_query", "recall", "relevance_from_sets",
]
