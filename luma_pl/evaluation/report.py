"""The evaluation report: one JSON file and four PNG plots from ``StreamEvaluator.series``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from luma_pl.telemetry.latency import LatencyHistogram
from luma_pl.telemetry.log_histogram import LogHistogram

RATE = {"ylim": (-0.02, 1.02), "ylabel": "share of sampled queries (95% interval)", "interval": True}
"""Style of a plot of per-query rates: the whole [0, 1] axis (an all-zero line reads as zero, not as
noise on a ±0.04 axis) and a Wilson 95% band per window (``wilson_interval``)."""

PLOTS = {
    "recall_over_time.png": dict(RATE, title="Retrieval of the sampled queries, k = {k}", curves=[
        ("recall@k", "Recall@{k}"), ("mrr@k", "MRR@{k}"), ("ndcg@k", "nDCG@{k}"),
        ("csls_recall@k", "Recall@{k}, CSLS re-ranked (not certified)"),
        ("old_hit_rate", "HitRate@{k}, queries of earlier events")]),
    "prequential_over_time.png": dict(RATE, title="Prequential: each anchor pair scored before the bridge learns it",
                                      curves=[("preq_recall@1", "Recall@1 among the batch + last 1024 anchors"),
                                              ("preq_recall@k", "Recall@{k}"), ("preq_mrr@k", "MRR@{k}")]),
    "memory_over_time.png": dict(title="Memory over the stream (grey lines: budgets)", ylabel="items",
                                 curves=[("hot_items", "hot items"), ("warm_items", "warm items"), ("evicted", "evicted")],
                                 budgets=[("hot_max_items", "hot budget"), ("warm_max_items", "warm budget")]),
    "safe_at_k_over_time.png": dict(RATE, title="Certified answers, k = {k}", curves=[
        ("safe@1", "Safe@1 rate"), ("safe@k", "Safe@{k} rate"), ("crude_safe@1", "crude rule @1"),
        ("radius@1_zero_share", "radius@1 = 0: not certifiable even at ε = 0 (ζ)")]),
    "latency_over_time.png": dict(title="Query latency", ylabel="ms per query", ylim_from_zero=True, curves=[
        ("latency_p50_ms", "p50, single-query probes"), ("latency_p99_ms", "p99, single-query probes"),
        ("search_ms_per_query", "median, batched search")]),
    "certified_radius_over_time.png": dict(
        title="Certified radius of the answers vs the drift bound used", yscale="log",
        ylabel="normalised-score units (log)", curves=[
            ("radius@1_p10", "radius@1 p10"), ("radius@1_p50", "radius@1 median"), ("radius@1_p90", "radius@1 p90"),
            ("radius@k_p50", "radius@{k} median"), ("mean_eps_q", "ε_q used (certified iff radius > ε_q)")]),
}
"""One PNG per entry, x = events ingested: ``title`` / labels may name ``{k}``; ``interval``: a
Wilson band with the window's query count; ``budgets``: grey lines at the memory's budgets."""

LINES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "x", "d")

INTERVAL_OF = {"old_hit_rate": "old_queries", "csls_recall@k": "csls_queries", "preq_recall@1": "preq_pairs", "preq_recall@k": "preq_pairs",
               "preq_mrr@k": "preq_pairs"}
"""Rates whose denominator is not the window's ``queries`` (the point's key holding it)."""

CI_METRICS = ("hit_rate@k", "recall@k", "mrr@k", "ndcg@k", "safe@1", "safe@k", "crude_safe@1")
"""Whole-run rates the summary gives a 95% interval for (``<name>_ci95``)."""


def wilson_interval(p, n, z: float = 1.96):
    """Wilson score interval of a mean ``p`` of ``n`` values in [0, 1] (arrays broadcast).

    For 0/1 values (Safe@k, HitRate) it is the binomial Wilson interval. For other values in [0, 1]
    (Recall@k, MRR, nDCG) it is conservative: a variable in [0, 1] with mean p has variance at most
    p(1 - p) (E[X^2] <= E[X]), the binomial variance the interval is built from. NaN where n = 0."""
    p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
    n = np.asarray(n, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = 1.0 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        lo, hi = np.where(n > 0, centre - half, np.nan), np.where(n > 0, centre + half, np.nan)
    return np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)


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
    prequential = {m.replace("@k", f"@{k}"): weighted(m, "preq_pairs")
                   for m in ("preq_recall@1", "preq_recall@k", "preq_mrr@k", "preq_cosine")}
    hubness = {m.replace("@k", f"@{k}"): weighted(m, "csls_queries")
               for m in ("csls_hit_rate@k", "csls_recall@k", "csls_mrr@k", "csls_ndcg@k")}
    last = series[-1]
    lat50 = [p["latency_p50_ms"] for p in series if math.isfinite(p["latency_p50_ms"])]
    lat99 = [p["latency_p99_ms"] for p in series if math.isfinite(p["latency_p99_ms"])]
    out = {"k": k, "queries": int(q.sum()), "events": last["events"],
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
            **labelled, **prequential, "preq_pairs": total("preq_pairs"), **hubness,
            **radius_summary(radii, k), "wall_s": last["wall_s"]}
    n_all = float(q.sum())
    for m in CI_METRICS:  # pooled over every sampled query of the run
        name = m.replace("@k", f"@{k}")
        v = out[name]
        lo, hi = wilson_interval(v, n_all) if math.isfinite(v) else (math.nan, math.nan)
        out[f"{name}_ci95"] = [float(lo), float(hi)]
    return out


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


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


def merge_equal_curves(curves: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """Curves with the same values in every window drawn once, as ``"A = B"``: lines that coincide
    hide each other, so each legend entry names one visible line."""
    out: list[tuple[list[str], np.ndarray]] = []
    for label, y in curves:
        for labels, other in out:
            if _equal(y, other):
                labels.append(label)
                break
        else:
            out.append(([label], y))
    return [(" = ".join(labels), y) for labels, y in out]


def write_report(series: list[dict], summary: dict, out_dir: str | Path, extra: dict | None = None,
                 budgets: dict | None = None, radii: dict[str, LogHistogram] | None = None) -> dict[str, Path]:
    """Writes ``report.json`` (summary, series, ``extra``, ``provenance``) and the PNG plots into
    ``out_dir``; returns their paths by name. ``budgets``: the memory's ``hot_max_items`` /
    ``warm_max_items`` (dashed lines on the memory plot); ``radii``: the run's pooled radius
    histograms (``certified_radius_distribution.png``, with the last ε beside them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from luma_pl.tracking.provenance import provenance

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.json"}
    clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
    payload = {"summary": {k: [clean(x) for x in v] if isinstance(v, list) else clean(v) for k, v in summary.items()},
               "series": [{k: clean(v) for k, v in p.items()} for p in series], **(extra or {}),
               "provenance": provenance()}
    tmp = paths["report"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(paths["report"])
    k = summary.get("k", "k")
    x = np.array([p["events"] for p in series], np.float64)
    for name, style in PLOTS.items():
        fig, ax = plt.subplots(figsize=(7.2, 4.0), dpi=100)
        curves, key_of = [], {}  # key_of: a drawn label -> its series key (the interval's denominator)
        for key, label in style["curves"]:
            y = np.array([p.get(key, math.nan) for p in series], np.float64)
            if style.get("yscale") == "log":  # zeros, inf and the 1e6 clamp of unknown ε have no place here
                y = np.where((y > 0) & (y < 1e6), y, np.nan)
            if np.isnan(y).all():
                continue
            curves.append((label.format(k=k), y))
            key_of[label.format(k=k)] = key
        for i, (label, y) in enumerate(merge_equal_curves(curves)):
            zero = " (0 in every window)" if np.nanmax(np.abs(y)) == 0 else ""
            # a line style and marker of its own: lines that nearly coincide stay apart
            (line,) = ax.plot(x, y, linestyle=LINES[i % len(LINES)], marker=MARKERS[i % len(MARKERS)],
                              markersize=4, label=label + zero)
            if style.get("interval"):
                # the first curve of a merged "A = B" label (they share their values, so any key will do)
                key = next(key for lab, key in key_of.items() if label == lab or label.startswith(f"{lab} = "))
                n = np.array([p.get(INTERVAL_OF.get(key, "queries"), p.get("queries", 0)) for p in series], np.float64)
                lo, hi = wilson_interval(y, n)
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
        for key, label in style.get("budgets", []):
            if budgets and budgets.get(key):
                ax.axhline(budgets[key], linestyle="--", linewidth=1, color="grey")
                ax.annotate(f"{label} {budgets[key]:,}", (x[0] if len(x) else 0, budgets[key]), fontsize=7,
                            xytext=(2, 2), textcoords="offset points", color="dimgrey")
        if style.get("yscale"):
            ax.set_yscale(style["yscale"])
        if style.get("ylim"):
            ax.set_ylim(*style["ylim"])
        elif style.get("ylim_from_zero"):
            ax.set_ylim(bottom=0)
        ax.set_ylabel(style["ylabel"])
        ax.set_xlabel("events ingested")
        ax.set_title(style["title"].format(k=k))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        paths[name.removesuffix(".png")] = out / name
    if radii:
        paths["certified_radius_distribution"] = _radius_distribution(plt, radii, summary, out, k)
    return paths


def _radius_distribution(plt, radii: dict[str, LogHistogram], summary: dict, out: Path, k) -> Path:
    """Histogram of every sampled answer's certified radius (log bins), the last ε as a line: an
    answer is certified iff its radius exceeds the ε it was asked at."""
    from luma_pl.telemetry.log_histogram import BINS, HIGH, LOW

    group = 10  # 10 of the histogram's bins per drawn bin: 10 bins per decade
    bin_edges = LOW * (HIGH / LOW) ** (np.arange(BINS + 1) / BINS)  # of the histogram's inside bins
    edges = bin_edges[::group]
    eps = summary.get("epsilon_last")
    fig, ax = plt.subplots(figsize=(7.2, 4.0), dpi=100)
    for name, h in radii.items():
        n = len(h)
        if not n:
            continue
        inside = h.counts[1:BINS + 1].reshape(-1, group).sum(axis=1) / n
        keep = np.flatnonzero(inside)
        lo_b, hi_b = (max(keep.min() - 1, 0), min(keep.max() + 2, len(inside))) if len(keep) else (0, len(inside))
        label = f"{name.replace('@k', f'@{k}')}: {h.counts[0] / n:.0%} of {n:,} answers at 0 (not drawn)"
        if isinstance(eps, (int, float)) and 0 <= eps < 1e6:  # bins wholly above ε: certified at it
            above = h.counts[1:BINS + 1][bin_edges[:-1] > eps].sum()
            label += f", {above / n:.0%} above ε"
        ax.stairs(inside[lo_b:hi_b], edges[lo_b:hi_b + 1], label=label)
    if isinstance(eps, (int, float)) and 0 < eps < 1e6:
        ax.axvline(eps, color="red", linestyle="--", label=f"ε at the end = {eps:.3g} ({summary.get('epsilon_source')})")
    elif isinstance(eps, (int, float)) and eps == 0:
        ax.text(0.01, 0.95, "ε = 0 (bridge frozen): every answer with radius > 0 is certified",
                transform=ax.transAxes, fontsize=7, va="top")
    ax.set_xscale("log")
    ax.set_xlabel("certified radius (normalised-score units, log)")
    ax.set_ylabel("share of sampled answers per bin")
    ax.set_title(f"Certified radius of every sampled answer, k = {k}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "certified_radius_distribution.png"
    fig.savefig(path)
    plt.close(fig)
    return path
