"""The report's intervals, plots and provenance (luma_pl.evaluation.report)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from luma_pl.evaluation.report import merge_equal_curves, summarise, wilson_interval, write_report
from luma_pl.telemetry.log_histogram import LogHistogram


@pytest.mark.parametrize("hits,n", [(0, 64), (3, 64), (32, 64), (64, 64), (1, 7), (917, 1248)])
def test_wilson_interval_equals_scipy_for_binary_rates(hits, n):
    lo, hi = wilson_interval(hits / n, n)
    ref = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert lo == pytest.approx(ref.low, abs=2e-4) and hi == pytest.approx(ref.high, abs=2e-4)


def test_wilson_interval_is_conservative_for_bounded_means():
    """Recall-like per-query values in [0, 1]: the interval covers the mean at least 95% of the time."""
    rng = np.random.default_rng(0)
    n, trials, mean = 64, 4000, 0.3
    values = rng.beta(0.6, 1.4, size=(trials, n))  # mean 0.3, far from 0/1-valued
    lo, hi = wilson_interval(values.mean(axis=1), n)
    assert ((lo <= mean) & (mean <= hi)).mean() >= 0.95
    assert np.isnan(wilson_interval(0.5, 0)[0])


def test_merge_equal_curves_names_every_coinciding_line_once():
    a, b = np.array([0.0, 0.0, np.nan]), np.array([0.1, 0.2, 0.3])
    merged = merge_equal_curves([("Safe@1", a), ("Safe@10", a.copy()), ("recall", b), ("crude", a.copy())])
    assert [label for label, _ in merged] == ["Safe@1 = Safe@10 = crude", "recall"]


def _series(n_windows: int = 4) -> list[dict]:
    out = []
    for w in range(n_windows):
        out.append({"events": 128 * (w + 1), "queries": 64.0, "old_queries": 32.0, "hit_rate@k": 0.5, "recall@k": 0.25,
                    "mrr@k": 0.1, "ndcg@k": 0.2, "safe@1": 0.0, "safe@k": 0.0, "crude_safe@1": 0.0,
                    "fresh_hit_rate": 0.5, "old_hit_rate": 0.4, "epsilon": 0.05, "epsilon_source": "interval",
                    "zeta_max": 0.01, "latency_p50_ms": 1.0, "latency_p99_ms": 2.0, "ingest_per_s": 1e3,
                    "hot_items": 100.0 + w, "warm_items": 300.0, "evicted": 0.0, "dropped": 0.0, "hot_bytes": 1.0,
                    "warm_bytes": 1.0, "radius@1_p50": 0.02, "mean_eps_q": 0.05, "wall_s": float(w)})
    return out


def test_report_has_intervals_provenance_and_every_plot(tmp_path):
    series = _series()
    radii = {"radius@1": LogHistogram(), "radius@k": LogHistogram()}
    radii["radius@1"].add(np.r_[np.zeros(10), np.linspace(1e-3, 0.1, 90)])
    summary = summarise(series, 10, radii=radii)
    lo, hi = summary["recall@10_ci95"]
    assert lo < summary["recall@10"] < hi and hi - lo < 0.12  # 256 queries pooled: half-width 1.96 * sqrt(p(1-p)/256) = 0.053
    assert summary["safe@1_ci95"][0] == 0.0 < summary["safe@1_ci95"][1]
    paths = write_report(series, summary, tmp_path, budgets={"hot_max_items": 120, "warm_max_items": 400}, radii=radii)
    for name in ("recall_over_time", "memory_over_time", "safe_at_k_over_time", "latency_over_time",
                 "certified_radius_over_time", "certified_radius_distribution"):
        assert paths[name].stat().st_size > 1000, name
    report = json.loads(paths["report"].read_text())
    prov = report["provenance"]
    assert prov["versions"]["torch"] and prov["versions"]["faiss-cpu"] or prov["versions"].get("faiss-gpu")
    assert prov["git"]["commit"] is None or len(prov["git"]["commit"]) == 40
    assert prov["machine"]["cpus"] >= 1
    assert report["summary"]["recall@10_ci95"] == [pytest.approx(lo), pytest.approx(hi)]
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in report["summary"].values())
