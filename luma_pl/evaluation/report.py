"""The evaluation report: one JSON file and four PNG plots from ``StreamEvaluator.series``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from luma_pl.telemetry.latency import LatencyHistogram
from luma_pl.telemetry.log_histogram import LogHistogram

PLOTS = {
    "recall_over_time.png": ("Retrieval over the stream", [("recall@k", "Recall@k"), ("mrr@k", "MRR@k"),
                                                            ("ndcg@k", "nDCG@k"), ("old_hit_rate", "HitRate@k, earlier events")]),
    "memory_over_time.png": ("Memory over the stream", [("hot_items", "hot items"), ("warm_items", "warm items"),
                                                         ("evicted", "evicted")]),
    "safe_at_k_over_time.png": ("Certified answers", [("safe@1", "Safe@1 rate"), ("safe@k", "Safe@k rate"),
                                                       ("crude_safe@1", "crude rule @1"),
                                                       ("radius@1_zero_share", "radius@1 = 0: not certifiable even at ε = 0 (ζ)")]),
    "latency_over_time.png": ("Query latency per query (single-query probes)", [("latency_p50_ms", "p50 ms"), ("latency_p99_ms", "p99 ms"), ("search_ms_per_query", "batched, per query")]),
    "certified_radius_over_time.png": ("Certified radius of the answers vs the bridge's drift bound",
                                       [("radius@1_p10", "radius@1 p10"), ("radius@1_p50", "radius@1 median"),
                                        ("radius@1_p90", "radius@1 p90"), ("radius@k_p50", "radius@k median"),
                                        ("mean_eps_q", "ε_q used (certified iff radius > ε_q)")],
                                       {"yscale": "log", "ylabel": "normalised-score units"}),
}


def summarise(series: list[dict], k: int, latency: LatencyHistogram | None = None,
              radii: dict[str, LogHistogram] | None = None) -> dict:
    """Whole-run figures: query-weighted means of the rates (labelled-query rates weighted by the
    labelled queries each window scored), final memory state, and the per-query
    latency percentiles of every sample of the run (``latency``: the pooled histogram; without it,
    the median of the windows' percentiles), and the certified radii's quantiles over every sampled
    answer (``radii``: pooled histograms by name; 0 = not certified at any drift)."""
    if not series:
        return {}
    q = np.array([p["queries"] for p in series], np.float64)
    w = q / max(q.sum(), 1.0)

    def wmean(key):
        v = np.array([p[key] for p in series], np.float64)
        ok = np.isfinite(v)
        return float((v[ok] * w[ok]).sum() / max(w[ok].sum(), 1e-12)) if ok.any() else math.nan

    def weighted(key, by):  # a rate averaged over windows weighted by its own denominator
        n = np.array([p.get(by, 0.0) for p in series], np.float64)
        v = np.array([p.get(key, math.nan) for p in series], np.float64)
        ok = np.isfinite(v) & (n > 0)
        return float((v[ok] * n[ok]).sum() / n[ok].sum()) if ok.any() else math.nan

    total = lambda key: int(sum(p.get(key, 0) for p in series))  # noqa: E731
    labelled = {"labelled_queries": total("labelled_queries"), "labelled_scored": total("labelled_scored"),
                "labelled_unanswered": total("labelled_unanswered"),
                **{f"labelled_{m.replace('@k', f'@{k}')}": weighted(f"labelled_{m}", "labelled_scored")
                   for m in ("hit_rate@k", "recall@k", "mrr@k", "ndcg@k")},
                "labelled_safe@1": weighted("labelled_safe@1", "labelled_queries"),
                f"labelled_safe@{k}": weighted("labelled_safe@k", "labelled_queries"),
                "labelled_relevant": total("labelled_relevant"),
                "labelled_relevant_unseen": total("labelled_relevant_unseen")}
    last = series[-1]
    lat50 = [p["latency_p50_ms"] for p in series if math.isfinite(p["latency_p50_ms"])]
    lat99 = [p["latency_p99_ms"] for p in series if math.isfinite(p["latency_p99_ms"])]
    return {"k": k, "queries": int(q.sum()), "events": last["events"],
            **{f"{m.replace('@k', f'@{k}')}": wmean(m) for m in ("hit_rate@k", "recall@k", "mrr@k", "ndcg@k")},
            "safe@1": wmean("safe@1"), f"safe@{k}": wmean("safe@k"), "crude_safe@1": wmean("crude_safe@1"),
            "fresh_hit_rate": wmean("fresh_hit_rate"), "old_hit_rate": wmean("old_hit_rate"),
            "epsilon_last": last["epsilon"], "epsilon_source": last["epsilon_source"], "zeta_max_last": last["zeta_max"],
            "latency_p50_ms": latency.quantile(0.5) * 1e3 if latency is not None
            else float(np.median(lat50)) if lat50 else math.nan,
            "latency_p99_ms": latency.quantile(0.99) * 1e3 if latency is not None
            else float(np.median(lat99)) if lat99 else math.nan,
            "latency_samples": len(latency) if latency is not None else 0,
            "search_ms_per_query": float(np.nanmedian([p.get("search_ms_per_query", math.nan) for p in series]))
            if any(math.isfinite(p.get("search_ms_per_query", math.nan)) for p in series) else math.nan,
            "ingest_per_s": float(np.median([p["ingest_per_s"] for p in series])),
            "hot_items": last["hot_items"], "warm_items": last["warm_items"], "evicted": last["evicted"],
            "dropped": last["dropped"], "hot_bytes": last["hot_bytes"], "warm_bytes": last["warm_bytes"],
            "duplicates_skipped": int(sum(p.get("duplicates_skipped", 0) for p in series)),
            "replay_skipped": int(sum(p.get("replay_skipped", 0) for p in series)),
            "replay_events_skipped": int(sum(p.get("replay_events_skipped", 0) for p in series)),
            **labelled, **radius_summary(radii, k), "wall_s": last["wall_s"]}


def radius_summary(radii: dict[str, LogHistogram] | None, k: int) -> dict:
    """p10 / p50 / p90 of each pooled radius histogram and the share of answers with radius 0."""
    out = {}
    for name, h in (radii or {}).items():
        label = name.replace("@k", f"@{k}")
        n = len(h)
        for p in (0.1, 0.5, 0.9):
            out[f"{label}_p{round(100 * p)}"] = h.quantile(p, underflow=0.0) if n else math.nan
        out[f"{label}_zero_share"] = float(h.counts[0] / n) if n else math.nan
    return out


def write_report(series: list[dict], summary: dict, out_dir: str | Path, extra: dict | None = None) -> dict[str, Path]:
    """Writes ``report.json`` and the PNG plots into ``out_dir``; returns their paths by name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.json"}
    clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
    payload = {"summary": {k: clean(v) for k, v in summary.items()},
               "series": [{k: clean(v) for k, v in p.items()} for p in series], **(extra or {})}
    tmp = paths["report"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(paths["report"])
    x = [p["events"] for p in series]
    for name, (title, curves, *style) in PLOTS.items():
        style = style[0] if style else {}
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
        for key, label in curves:
            y = [p.get(key, math.nan) for p in series]
            if style.get("yscale") == "log":  # zeros, inf and the 1e6 clamp of unknown ε have no place here
                y = [v if isinstance(v, (int, float)) and 0 < v < 1e6 else math.nan for v in y]
            ax.plot(x, y, marker=".", label=label)
        if style.get("yscale"):
            ax.set_yscale(style["yscale"])
        if style.get("ylabel"):
            ax.set_ylabel(style["ylabel"])
        ax.set_xlabel("events ingested")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        paths[name.removesuffix(".png")] = out / name
    return paths
