"""bench/bridge_quality.py: the oracle, the metrics it reports and the quick run end to end."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # `bench` is a folder at the repo root, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import bridge_quality as bq  # noqa: E402
from luma_pl.bridge import functional as BF  # noqa: E402


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(("d_s", "d_c"), [(12, 20), (20, 12), (16, 16)])
def test_scipy_oracle_is_the_semi_orthogonal_procrustes_solution(d_s, d_c):
    rng = np.random.default_rng(d_s * 100 + d_c)
    s, c = _unit(rng, 200, d_s), _unit(rng, 200, d_c)
    W = bq.scipy_oracle(s, c)  # zero-padding route through scipy.linalg.orthogonal_procrustes
    assert W.shape == (d_c, d_s)
    M = torch.from_numpy(c.astype(np.float64).T @ s.astype(np.float64))
    assert np.abs(W - BF.solve(M).numpy()).max() < 1e-10
    assert np.abs(W - bq.svd_oracle(s, c)).max() < 1e-10
    gram = W.T @ W if d_c >= d_s else W @ W.T
    assert np.abs(gram - np.eye(min(d_s, d_c))).max() < 1e-12
    # it is the optimum: no random semi-orthogonal map fits the pairs better (tr(W^T M) is maximal)
    best = float((W * M.numpy()).sum())
    for _ in range(20):
        R = np.linalg.qr(rng.standard_normal((max(d_s, d_c), min(d_s, d_c))))[0]
        R = R if d_c >= d_s else R.T
        assert float((R * M.numpy()).sum()) < best


def test_evaluate_ranks_and_metrics():
    items = np.eye(4, dtype=np.float32)  # (4, 4)
    # query 0 -> item 0 ranked 1st; query 1 -> item 2 ranked 2nd (item 1 scores higher)
    queries = np.array([[1, 0, 0, 0], [0, 0.8, 0.6, 0]], np.float32)
    out = bq.evaluate(queries, items, np.array([0, 2]))
    assert out["recall"] == pytest.approx(1.0) and out["hit_rate"] == pytest.approx(1.0)
    assert out["mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert out["ndcg"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert out["median_rank"] in (1.0, 2.0)


def test_curve_points():
    assert bq.curve_points(5000) == [64, 256, 1024, 4096, 5000]
    assert bq.curve_points(2508) == [64, 256, 1024, 2508]
    assert bq.curve_points(50) == [50]


def test_quick_synthetic_run_writes_the_must_show(tmp_path):
    res = bq.main(["--quick", "--synthetic", "--out", str(tmp_path / "bq")])
    saved = json.loads((tmp_path / "bq.json").read_text())
    md = (tmp_path / "bq.md").read_text()
    assert saved["corpus"] == res["corpus"] and "Learning curve" in md and "epsilon" in md
    rows = {r["method"]: r for r in res["rows"]}
    stream, oracle = rows["StreamingProcrustes lam=1"], rows["scipy orthogonal_procrustes (batch oracle)"]
    # (b) == (c) at lam = 1: same W, hence the same metrics
    assert res["oracle"]["max_abs_W_stream_minus_scipy_procrustes"] <= 1e-8
    assert res["oracle"]["max_abs_W_stream_minus_scipy_svd"] <= 1e-8
    for m in ("recall", "mrr", "hit_rate", "ndcg"):
        assert stream[m] == pytest.approx(oracle[m], abs=1e-12)
    # every required row is there, with metrics in [0, 1]
    groups = {r["group"] for r in res["rows"]}
    assert {"a", "b", "c", "d", "e"} <= groups
    assert {f"LearnedBridge {k} (InfoNCE)" for k in ("linear", "orthogonal", "mlp")} <= set(rows)
    for r in res["rows"]:
        assert all(0.0 <= r[m] <= 1.0 for m in ("recall", "mrr", "hit_rate", "ndcg"))
        assert r["mrr"] <= r["hit_rate"] + 1e-12 and r["recall"] == pytest.approx(r["hit_rate"])  # |R| = 1
    # the synthetic relation is a semi-orthogonal map: Procrustes recovers it, chance does not
    chance = rows["random semi-orthogonal map"]["recall"]
    assert chance < 0.1 and stream["recall"] > 0.8 and stream["recall"] > chance + 0.5
    # learning curve: the requested points, in both orders; all anchors -> the same W either way
    n = res["corpus"]["items"]
    for order in ("topic_order", "shuffled"):
        assert [p["anchors"] for p in res["curve"][order]] == bq.curve_points(n) == [64, 256, n]
    assert res["curve"]["topic_order"][-1]["recall"] == pytest.approx(stream["recall"], abs=1e-12)
    assert res["curve"]["shuffled"][-1]["recall"] == pytest.approx(stream["recall"], abs=1e-12)
    assert res["curve"]["shuffled"][0]["topics_seen"] > res["curve"]["topic_order"][0]["topics_seen"]
    # epsilon at every scheduled refresh (quick: R = 100 pairs); the first has no previous W
    for order in ("topic_order", "shuffled"):
        e = res["epsilon"][order]
        assert [x["pairs"] for x in e["series"]] == list(range(100, n + 1, 100))
        assert math.isinf(e["series"][0]["epsilon"])
        eps = [x["epsilon"] for x in e["series"][1:]]
        assert e["epsilon"]["n"] == len(eps) and all(0.0 < x <= 2.0 + 1e-9 for x in eps)  # ||W - W'||_2 <= 2
        assert e["epsilon"]["median"] == pytest.approx(float(np.median(eps)))
        # epsilon bounds the move of every unit query
        assert all(x["query_max_move"] <= x["epsilon"] + 1e-9 for x in e["series"][1:])
        assert e["series"][-1]["drift_to_final"] == pytest.approx(0.0, abs=1e-12)  # n is a multiple of R


def test_oracle_mismatch_would_fail(monkeypatch):
    """The run refuses to report when the streaming W and the oracle disagree."""
    arr = bq.synthetic(n_items=200)
    monkeypatch.setattr(bq, "scipy_oracle", lambda s, c: bq.svd_oracle(s, c) + 1e-6)
    with pytest.raises(AssertionError, match="orthogonal_procrustes"):
        bq.run(arr, quick=True, epochs=1, extra_lams=(), refresh_every=100)


@pytest.mark.slow  # builds the demo corpus on first use (~2-3 min on 2 cores), cached after
def test_quick_on_a_demo_slice():
    arr = bq.load_demo(max_items=300)
    assert arr.item_s.shape == (300, 256) and arr.item_c.shape == (300, 384)
    assert arr.query_item.max() < 300 and len(arr.query_item) == len(arr.query_s) == len(arr.query_c)
    res = bq.run(arr, quick=True, epochs=1, extra_lams=(), refresh_every=100)
    rows = {r["method"]: r for r in res["rows"]}
    assert res["oracle"]["max_abs_W_stream_minus_scipy_procrustes"] <= 1e-8
    assert rows["StreamingProcrustes lam=1"]["recall"] > 2 * rows["random semi-orthogonal map"]["recall"]
