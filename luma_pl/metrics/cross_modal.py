"""Cross-modal retrieval metrics in both directions, with several relevant items per query.

A test set is two embedding sets ``a`` (e.g. images, N_a rows) and ``b`` (e.g. captions, N_b rows)
and a pairing ``b_to_a`` (N_b,): the ``a`` row each ``b`` row belongs to (COCO / Flickr30k: five
captions per image; AudioCaps / Clotho: several captions per clip). Retrieval runs both ways on
the cosine scores ``a @ b.T`` (rows are L2-normalised first):

* **a→b** (image→text): query ``a_i``, relevant = every ``b_j`` with ``b_to_a[j] == i``;
* **b→a** (text→image): query ``b_j``, relevant = ``a_{b_to_a[j]}`` (one item).

Per direction, with ``r`` the 1-based rank of a query's *first* relevant item (ties broken by the
lower index, i.e. a stable descending sort):

* ``R@k`` = share of queries with r <= k (HitRate@k, what CLIP papers and CLIP_benchmark call
  Recall@k for multi-caption sets);
* ``recall@k`` = mean |top-k ∩ relevant| / |relevant| (true recall; equals R@k with one relevant);
* ``mrr@k``, ``ndcg@k`` (binary gains, ideal DCG over all relevant: ``functional.per_query``);
* ``mean_rank`` = mean of r, ``median_rank`` = floor(median(r - 1)) + 1, as open_clip's
  ``get_clip_metrics`` computes them (the median of an even count is the mean of the middle two,
  then floored).

With one caption per image (``b_to_a = arange(N)``) the R@k / mean / median ranks equal
``open_clip_train.train.get_clip_metrics`` exactly when no two scores of a row tie (the tests check
this on hand-made and random cases). Cost: one (N_a, N_b) score matrix, computed in row chunks of
``chunk`` queries so a 25k × 125k COCO-sized evaluation never holds the full matrix twice.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from luma_pl.metrics import functional as F


def first_relevant_rank(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """scores (Q, N), relevant (Q, N) bool -> (Q,) long: 1-based rank of each query's first relevant
    item under a stable descending sort (ties go to the lower index); 0 where none is relevant."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (Q, N)
    rel_sorted = torch.gather(relevant, 1, order)  # (Q, N) relevance in rank order
    return torch.where(rel_sorted.any(1), rel_sorted.float().argmax(1) + 1, torch.zeros(len(scores), dtype=torch.long))


def direction_metrics(scores: torch.Tensor, relevant: torch.Tensor, ks=(1, 5, 10), chunk: int = 4096) -> dict[str, float]:
    """One retrieval direction: ``scores`` (Q, N) float, ``relevant`` (Q, N) bool (every query has
    at least one relevant item). Returns R@k, recall@k, mrr@k, ndcg@k for each k, mean and median rank."""
    if scores.shape != relevant.shape or scores.ndim != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and relevant {tuple(relevant.shape)} must both be (queries, items)")
    if not bool(relevant.any(1).all()):
        bad = int(torch.nonzero(~relevant.any(1))[0, 0])
        raise ValueError(f"query {bad} has no relevant item; every query of a test set needs one (drop it or fix "
                         "the pairing)")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks={ks} must be positive cut-offs, e.g. (1, 5, 10)")
    q_n = scores.shape[0]
    firsts, sums = [], {f"{m}@{k}": 0.0 for k in ks for m in ("R", "recall", "mrr", "ndcg")}
    for i in range(0, q_n, chunk):
        s, r = scores[i:i + chunk], relevant[i:i + chunk]
        first = first_relevant_rank(s, r)
        firsts.append(first)
        for k in ks:
            sums[f"R@{k}"] += float((first <= k).sum())
            for m in ("recall", "mrr", "ndcg"):
                sums[f"{m}@{k}"] += float(F.per_query(m, s.double(), r, k)[0].sum())
    first = torch.cat(firsts).double()
    out = {name: v / q_n for name, v in sums.items()}
    out["mean_rank"] = float(first.mean())
    out["median_rank"] = float(math.floor(np.median((first - 1).numpy())) + 1)
    return out


def retrieval_both_directions(a: torch.Tensor, b: torch.Tensor, b_to_a, ks=(1, 5, 10), names=("a", "b"),
                              chunk: int = 4096) -> dict[str, float]:
    """Both directions of a paired test set (see the module doc). ``a`` (N_a, d), ``b`` (N_b, d),
    ``b_to_a`` (N_b,) ints in [0, N_a); every ``a`` row needs at least one ``b`` row. Keys are
    ``"<a>_to_<b>/<metric>"`` and ``"<b>_to_<a>/<metric>"`` with ``names`` = (a name, b name)."""
    a = torch.as_tensor(a).float()
    b = torch.as_tensor(b).float()
    idx = torch.as_tensor(np.asarray(b_to_a), dtype=torch.long)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must be (n, d) with the same d (bridge one "
                         "space into the other first)")
    if idx.shape != (b.shape[0],) or (len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= a.shape[0])):
        raise ValueError(f"b_to_a must hold one index in [0, {a.shape[0]}) per b row ({b.shape[0]}), got shape "
                         f"{tuple(idx.shape)}")
    orphans = torch.ones(a.shape[0], dtype=torch.bool)
    orphans[idx] = False
    if bool(orphans.any()):
        raise ValueError(f"{int(orphans.sum())} {names[0]} rows have no {names[1]} row (first: "
                         f"{int(torch.nonzero(orphans)[0, 0])}); drop them or fix b_to_a")
    a = torch.nn.functional.normalize(a, dim=1)
    b = torch.nn.functional.normalize(b, dim=1)
    scores = a @ b.T  # (N_a, N_b)
    rel_ab = idx[None, :] == torch.arange(a.shape[0])[:, None]  # (N_a, N_b)
    out = {f"{names[0]}_to_{names[1]}/{k}": v for k, v in direction_metrics(scores, rel_ab, ks, chunk).items()}
    out |= {f"{names[1]}_to_{names[0]}/{k}": v for k, v in direction_metrics(scores.T, rel_ab.T, ks, chunk).items()}
    return out
