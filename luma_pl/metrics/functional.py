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


def per_query_from_ids(result_ids, relevant: list, k: int) -> dict[str, torch.Tensor]:
    """Per-query HitRate/Recall/MRR/nDCG@k from retrieved ids and relevant id sets (binary gains).

    ``result_ids`` (Q, k') int64 (numpy or torch): each query's retrieved item ids in rank order,
    ``-1`` for an empty slot (fewer than k' results); only the first ``k`` columns count.
    ``relevant``: Q 1-D int64 arrays/tensors, the ids of each query's relevant items (a repeated id
    counts once; ids need not be retrieved). With R the set of relevant ids and top-k the first k
    retrieved ids (a retrieved id repeated later in the list counts only at its first rank):
      HitRate@k = 1[top-k ∩ R ≠ ∅];  Recall@k = |top-k ∩ R| / |R|;
      MRR@k = 1 / rank of the first relevant id in top-k, else 0;
      nDCG@k = DCG / IDCG, DCG = sum over relevant ranks r <= k of 1 / log2(r + 1), IDCG = the same sum
      over r = 1..min(k, |R|) (relevant items that were not retrieved still count in the ideal).
    A query with an empty R gets 0 for every metric (callers exclude or count such queries).
    Equals ``per_query(metric, scores, relevance, k)`` on the equivalent dense matrices.
    Returns ``{metric: (Q,) float64}`` for every metric of ``METRICS``.
    """
    import numpy as np

    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k={k!r} must be a positive int, e.g. k=10")
    ids = result_ids.detach().cpu().numpy() if isinstance(result_ids, torch.Tensor) else np.asarray(result_ids)
    if ids.ndim != 2:
        raise ValueError(f"result_ids has shape {ids.shape}; pass a (queries, k) int64 array, -1 for empty slots")
    if ids.size and ids.dtype.kind not in "iu":
        raise ValueError(f"result_ids has dtype {ids.dtype}; pass int64 item ids (-1 for empty slots)")
    if len(relevant) != ids.shape[0]:
        raise ValueError(f"relevant has {len(relevant)} entries but result_ids has {ids.shape[0]} rows; "
                         "pass one id array per query")
    ids = ids[:, :k].astype(np.int64, copy=False)
    q_n, kk = ids.shape
    disc = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))  # (k,)
    out = {m: np.zeros(q_n, np.float64) for m in METRICS}
    for q in range(q_n):
        rel = relevant[q]
        rel = rel.detach().cpu().numpy() if isinstance(rel, torch.Tensor) else np.asarray(rel)
        if rel.ndim != 1 or (rel.size and rel.dtype.kind not in "iu"):
            raise ValueError(f"relevant[{q}] has shape {rel.shape} dtype {rel.dtype}; pass a 1-D int64 id array")
        rel_set = set(rel.astype(np.int64).tolist())
        rel_set.discard(-1)  # -1 is the empty-slot marker, never an item id
        if not rel_set:
            continue
        seen: set[int] = set()
        hit = np.zeros(kk, bool)
        for r, i in enumerate(ids[q].tolist()):
            if i != -1 and i not in seen:
                seen.add(i)
                hit[r] = i in rel_set
        n_hit = int(hit.sum())
        out["hit_rate"][q] = float(n_hit > 0)
        out["recall"][q] = n_hit / len(rel_set)
        out["mrr"][q] = 1.0 / (int(np.flatnonzero(hit)[0]) + 1) if n_hit else 0.0
        out["ndcg"][q] = float(disc[:kk][hit].sum() / disc[: min(k, len(rel_set))].sum())
    return {m: torch.from_numpy(v) for m, v in out.items()}
