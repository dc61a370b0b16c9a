"""Retrieval metrics over a score matrix (docs/design.md section 7).

Inputs: ``scores`` (Q, I) — query x item scores, higher is better; ``relevance`` (Q, I) — bool
(relevant or not) or float gains (graded relevance, 0 = not relevant). Ranking is by descending
score; ties go to the lower item index (a stable sort), so results are deterministic.

Per-query definitions with R = the query's relevant items and top-k its first k ranked items:
  HitRate@k = 1[top-k ∩ R ≠ ∅]                 (what CLIP papers call R@k)
  Recall@k  = |top-k ∩ R| / |R|                 (true recall)
  MRR@k     = 1 / rank of the first relevant item in top-k, else 0
  nDCG@k    = DCG@k / IDCG@k, DCG = sum_{r <= k} gain_r / log2(r + 1); the ideal DCG sorts ALL of
              the query's gains (not only the retrieved ones) and keeps the best min(k, |R|).
A query with no relevant item: ``empty_target`` = "zero" (counts as 0, torchmetrics' default
"neg"), "skip" (not counted) or "error".
"""

from __future__ import annotations

import torch

METRICS = ("hit_rate", "recall", "mrr", "ndcg")
EMPTY_ACTIONS = ("zero", "skip", "error")


def check_inputs(scores: torch.Tensor, relevance: torch.Tensor, k: int, empty_target: str = "zero") -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores has shape {tuple(scores.shape)}; pass a (queries, items) matrix")
    if relevance.shape != scores.shape:
        raise ValueError(
            f"relevance has shape {tuple(relevance.shape)} but scores has {tuple(scores.shape)}; "
            "pass one relevance entry per (query, item) score"
        )
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be a positive int, e.g. k=10")
    if empty_target not in EMPTY_ACTIONS:
        raise ValueError(f"empty_target={empty_target!r}: use one of {EMPTY_ACTIONS}")
    if scores.numel() and torch.isnan(scores).any():
        raise ValueError("scores contains NaN; a NaN score has no rank — check the query/item embeddings")
    if relevance.numel() and (relevance.float() < 0).any():
        raise ValueError("relevance has negative gains; use 0 for not relevant and > 0 for relevant")


def relevance_from_sets(relevant: list, n_items: int) -> torch.Tensor:
    """``relevant[q]`` = iterable of item indices relevant to query q -> bool matrix (Q, n_items)."""
    rel = torch.zeros(len(relevant), n_items, dtype=torch.bool)
    for q, items in enumerate(relevant):
        idx = list(items)
        if idx and (min(idx) < 0 or max(idx) >= n_items):
            raise ValueError(f"relevant[{q}]={sorted(idx)} has an index outside [0, {n_items}); fix the item ids")
        rel[q, idx] = True
    return rel


def per_query(metric: str, scores: torch.Tensor, relevance: torch.Tensor, k: int,
              empty_target: str = "zero") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query values (Q,) float64 and a bool mask (Q,) of the queries that count."""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: use one of {METRICS}")
    check_inputs(scores, relevance, k, empty_target)
    gains = relevance.to(torch.float64)  # (Q, I)
    is_rel = gains > 0
    n_rel = is_rel.sum(1)  # (Q,)
    empty = n_rel == 0
    if empty_target == "error" and bool(empty.any()):
        raise ValueError(
            f"{int(empty.sum())} query(ies) have no relevant item (first: {int(empty.nonzero()[0])}); "
            "use empty_target='zero' or 'skip'"
        )
    kk = min(k, scores.shape[1])
    order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :kk]  # (Q, kk)
    top_gain = gains.gather(1, order)  # (Q, kk)
    top_rel = top_gain > 0
    if metric == "hit_rate":
        val = top_rel.any(1).to(torch.float64)
    elif metric == "recall":
        val = top_rel.sum(1).to(torch.float64) / n_rel.clamp(min=1).to(torch.float64)
    elif metric == "mrr":
        ranks = torch.arange(1, kk + 1, dtype=torch.float64)
        first = torch.where(top_rel, ranks, torch.full_like(ranks, float("inf"))).amin(1) if kk else torch.full((scores.shape[0],), float("inf"), dtype=torch.float64)
        val = 1.0 / first  # 1/inf = 0 when no relevant item in the top-k
    else:
        disc = 1.0 / torch.log2(torch.arange(2, kk + 2, dtype=torch.float64))  # (kk,)
        dcg = (top_gain * disc).sum(1)
        ideal = torch.sort(gains, dim=1, descending=True).values[:, :kk]  # best gains among ALL items
        idcg = (ideal * disc).sum(1)
        val = torch.where(idcg > 0, dcg / idcg.clamp(min=1e-300), torch.zeros_like(dcg))
    val = torch.where(empty, torch.zeros_like(val), val)
    counted = ~empty if empty_target == "skip" else torch.ones_like(empty)
    return val, counted


def _mean(metric: str, scores, relevance, k, empty_target) -> torch.Tensor:
    val, counted = per_query(metric, scores, relevance, k, empty_target)
    n = int(counted.sum())
    return val[counted].sum() / n if n else torch.tensor(float("nan"), dtype=torch.float64)


def hit_rate(scores: torch.Tensor, relevance: torch.Tensor, k: int, empty_target: str = "zero") -> torch.Tensor:
    """Mean HitRate@k (float64 scalar; NaN when no query counts)."""
    return _mean("hit_rate", scores, relevance, k, empty_target)


def recall(scores: torch.Tensor, relevance: torch.Tensor, k: int, empty_target: str = "zero") -> torch.Tensor:
    """Mean true Recall@k = |top-k ∩ R| / |R|."""
    return _mean("recall", scores, relevance, k, empty_target)


def mrr(scores: torch.Tensor, relevance: torch.Tensor, k: int, empty_target: str = "zero") -> torch.Tensor:
    """Mean MRR@k."""
    return _mean("mrr", scores, relevance, k, empty_target)


def ndcg(scores: torch.Tensor, relevance: torch.Tensor, k: int, empty_target: str = "zero") -> torch.Tensor:
    """Mean nDCG@k with the ideal DCG from all relevant items."""
    return _mean("ndcg", scores, relevance, k, empty_target)
