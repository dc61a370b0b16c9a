"""Retrieval metrics against hand-made cases, a numpy reference and torchmetrics.retrieval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall

from luma_pl.metrics import HitRateAtK, MRRAtK, NDCGAtK, RecallAtK, build, per_query, relevance_from_sets
from luma_pl.metrics import functional as F


def _np_reference(scores: np.ndarray, rel: np.ndarray, k: int) -> dict[str, float]:
    """Loop-by-loop definitions (see docs/design.md section 7); rel holds gains."""
    out = {m: [] for m in F.METRICS}
    for s, g in zip(scores, rel, strict=False):
        order = sorted(range(len(s)), key=lambda i: (-s[i], i))[:k]
        R = {i for i in range(len(g)) if g[i] > 0}
        hits = [i for i in order if i in R]
        out["hit_rate"].append(1.0 if hits else 0.0)
        out["recall"].append(len(hits) / len(R) if R else 0.0)
        out["mrr"].append(next((1.0 / (r + 1) for r, i in enumerate(order) if i in R), 0.0))
        dcg = sum(g[i] / math.log2(r + 2) for r, i in enumerate(order))
        ideal = sorted(g, reverse=True)[:k]
        idcg = sum(x / math.log2(r + 2) for r, x in enumerate(ideal))
        out["ndcg"].append(dcg / idcg if idcg > 0 else 0.0)
    return {m: float(np.mean(v)) for m, v in out.items()}


def test_hand_made_case():
    # query 0: ranking 0,1,2,3,4 ; relevant {1, 4}; query 1: relevant {0}; query 2: relevant {2,3,4}
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5], [0.9, 0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4, 0.9]])
    rel = relevance_from_sets([{1, 4}, {0}, {2, 3, 4}], 5)
    k = 2
    hr, _ = per_query("hit_rate", scores, rel, k)
    rc, _ = per_query("recall", scores, rel, k)
    mr, _ = per_query("mrr", scores, rel, k)
    nd, _ = per_query("ndcg", scores, rel, k)
    assert hr.tolist() == [1.0, 1.0, 1.0]
    assert rc.tolist() == pytest.approx([0.5, 1.0, 2 / 3])  # true recall, not hit rate
    assert mr.tolist() == pytest.approx([0.5, 1.0, 1.0])
    # query 0: DCG = 1/log2(3); ideal from ALL relevant (2 of them) = 1 + 1/log2(3)
    # (an ideal built from the retrieved list alone would give 1.0 here)
    assert nd[0].item() == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert nd[1].item() == pytest.approx(1.0)
    # query 2: ranking 4,3,2,...: both retrieved relevant, ideal min(k, 3) = 2 ones -> 1
    assert nd[2].item() == pytest.approx(1.0)


def test_ties_break_to_lower_index_and_k_beyond_items():
    scores = torch.tensor([[0.5, 0.5, 0.5]])
    rel = torch.tensor([[False, False, True]])
    assert float(F.mrr(scores, rel, 1)) == 0.0 and float(F.mrr(scores, rel, 3)) == pytest.approx(1 / 3)
    assert float(F.recall(scores, rel, 50)) == 1.0


@pytest.mark.parametrize("k", [1, 3, 10])
def test_against_numpy_reference_graded(k):
    g = np.random.default_rng(k)
    scores = g.standard_normal((40, 25))
    gains = g.integers(0, 4, (40, 25)) * (g.random((40, 25)) < 0.3)
    gains[0] = 0  # one query with nothing relevant
    ref = _np_reference(scores, gains, k)
    for m in F.METRICS:
        got = float(F._mean(m, torch.tensor(scores), torch.tensor(gains, dtype=torch.float64), k, "zero"))
        assert got == pytest.approx(ref[m], abs=1e-12), m


@pytest.mark.parametrize("k", [1, 5, 10])
def test_against_torchmetrics_retrieval(k):
    g = torch.Generator().manual_seed(k)
    Q, I = 30, 20  # noqa: E741 - queries x items
    # continuous (no ties, where tie rules differ) and positive: torchmetrics 1.9's recall counts
    # only items with score > 0 as retrieved, a threshold our cosine scores must not have
    scores = torch.rand(Q, I, generator=g) + 1e-3
    rel = torch.rand(Q, I, generator=g) < 0.2
    rel[:, 0] |= ~rel.any(1)  # torchmetrics' 'neg' and our 'zero' agree anyway; keep all non-empty
    idx = torch.arange(Q)[:, None].expand(Q, I).reshape(-1)
    pairs = {
        "hit_rate": RetrievalHitRate(top_k=k), "recall": RetrievalRecall(top_k=k),
        "mrr": RetrievalMRR(top_k=k), "ndcg": RetrievalNormalizedDCG(top_k=k),
    }
    for name, tm in pairs.items():
        expected = float(tm(scores.reshape(-1), rel.reshape(-1), indexes=idx))
        assert float(F._mean(name, scores, rel, k, "zero")) == pytest.approx(expected, abs=1e-6), name


def test_negative_scores_still_rank():
    # cosine scores are often negative: they must rank like any others (unlike a > 0 threshold)
    scores = torch.tensor([[-0.1, -0.5, -0.9]])
    rel = torch.tensor([[False, True, True]])
    assert float(F.recall(scores, rel, 2)) == 0.5 and float(F.mrr(scores, rel, 3)) == 0.5


def test_empty_target_actions():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    rel = torch.tensor([[True, False], [False, False]])
    assert float(F.hit_rate(scores, rel, 1, "zero")) == 0.5
    assert float(F.hit_rate(scores, rel, 1, "skip")) == 1.0
    with pytest.raises(ValueError, match="no relevant item"):
        F.hit_rate(scores, rel, 1, "error")
    with pytest.raises(ValueError, match="k=0"):
        F.recall(scores, rel, 0)
    with pytest.raises(ValueError, match="relevance has shape"):
        F.recall(scores, rel[:1], 1)


def test_metric_classes_merge_exactly_over_chunks():
    g = torch.Generator().manual_seed(0)
    scores, rel = torch.randn(50, 30, generator=g), torch.rand(50, 30, generator=g) < 0.1
    for cls in (HitRateAtK, RecallAtK, MRRAtK, NDCGAtK):
        whole = cls(k=5, empty_target="skip")
        whole.update(scores, rel)
        a, b = cls(k=5, empty_target="skip"), cls(k=5, empty_target="skip")
        a.update(scores[:17], rel[:17])
        a.update(scores[17:18], rel[17:18])
        b.update(scores[18:], rel[18:])
        a.merge_state(b)  # what the dist 'sum' reduction does across ranks
        assert float(a.compute()) == pytest.approx(float(whole.compute()), abs=1e-12)
        assert float(whole.compute()) == pytest.approx(float(F._mean(cls.metric, scores, rel, 5, "skip")), abs=1e-12)
    suite = build(ks=(1, 10))
    assert set(suite) == {f"{m}@{k}" for m in ("recall", "mrr", "ndcg", "hit_rate") for k in (1, 10)}
    assert math.isnan(float(RecallAtK(k=1).compute()))


@pytest.mark.parametrize("seed", range(6))
def test_per_query_from_ids_equals_the_dense_matrices(seed):
    """Retrieved ids + relevant id sets (labelled queries) give per_query's figures on the equivalent
    dense (scores, relevance) matrices: every item ranked, the retrieved list its top-k (padded with
    -1 when fewer items exist than k), relevance sets of 0..5 ids with repeats."""
    rng = np.random.default_rng(seed)
    for k in (1, 5, 10):
        n_items = int(rng.integers(3, 30))
        ids = rng.choice(2**40, n_items, replace=False).astype(np.int64)  # arbitrary int64 ids
        scores = torch.from_numpy(rng.random((12, n_items)))
        rel_sets = [rng.choice(n_items, int(rng.integers(0, 6)), replace=True) for _ in range(12)]
        dense = relevance_from_sets([set(r.tolist()) for r in rel_sets], n_items)
        order = torch.argsort(scores, dim=1, descending=True).numpy()[:, :k]
        result = np.full((12, k), -1, np.int64)
        result[:, : order.shape[1]] = ids[order]
        got = F.per_query_from_ids(torch.from_numpy(result), [ids[r] for r in rel_sets], k)
        for m in F.METRICS:
            want = per_query(m, scores, dense, k)[0]
            np.testing.assert_allclose(got[m].numpy(), want.numpy(), rtol=0, atol=1e-12, err_msg=f"{m} k={k}")


def test_per_query_from_ids_counts_a_repeated_id_once_and_refuses_bad_shapes():
    got = F.per_query_from_ids(np.array([[7, 7, 3, -1]]), [np.array([7, 3])], 4)
    # 7 at rank 1 (its repeat at rank 2 is not a second hit), 3 at rank 3
    assert got["recall"].item() == 1.0 and got["mrr"].item() == 1.0
    assert got["ndcg"].item() == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert F.per_query_from_ids(np.array([[1, 2]]), [np.array([], np.int64)], 2)["hit_rate"].item() == 0.0
    with pytest.raises(ValueError, match="relevant has 2 entries but result_ids has 1 rows"):
        F.per_query_from_ids(np.array([[1, 2]]), [np.array([1]), np.array([2])], 2)
    with pytest.raises(ValueError, match="pass a \\(queries, k\\) int64 array"):
        F.per_query_from_ids(np.array([1, 2]), [np.array([1])], 2)
    with pytest.raises(ValueError, match="k=0 must be a positive int"):
        F.per_query_from_ids(np.array([[1]]), [np.array([1])], 0)
