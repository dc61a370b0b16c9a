"""Per-query latency percentiles in fixed memory, sum-mergeable across windows and ranks.

A query's latency is timed on its own (one query per search call, what an interactive caller
waits), never a batch's time divided by its queries. Samples are seconds in a ``LogHistogram``
(``log_histogram.py``: 1 us .. 100 s in 800 log bins, every reported percentile within 1.16% of a
sample's value).
"""

from __future__ import annotations

from luma_pl.telemetry.log_histogram import BINS, HIGH, LOW, LogHistogram, bin_of, quantile

__all__ = ["BINS", "HIGH", "LOW", "LatencyHistogram", "bin_of", "quantile"]


class LatencyHistogram(LogHistogram):
    """Counts of per-query latencies in seconds (see ``LogHistogram``)."""
