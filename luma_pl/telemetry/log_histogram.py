"""Percentiles in fixed memory, sum-mergeable across windows and ranks: a log-binned histogram.

Samples go into a histogram with logarithmic bins: bin ``b`` (1 <= b <= BINS) holds values in
``[LOW * G**(b-1), LOW * G**b)`` with ``G = (HIGH / LOW) ** (1 / BINS)``; bin 0 holds everything
below ``LOW`` (zeros too) and bin ``BINS + 1`` everything at or above ``HIGH``. Counts are integers,
so two histograms merge by adding them (windows into the run, ranks by one all-reduce), and the
merged quantile is the quantile of all samples pooled, not a median of per-window quantiles. Used
for per-query latencies (``latency.py``, seconds) and certified radii (normalised-score units).

Error bound: ``quantile(counts, p)`` returns the geometric midpoint of the bin holding the
``ceil(p * n)``-th smallest sample, so for a sample inside ``[LOW, HIGH)`` the reported value is
within a factor ``sqrt(G)`` of it: with 1e-6 .. 100 over 800 bins, G = 10**(8/800) = 1.0233 and
the relative error is at most sqrt(G) - 1 = 1.16%. Out-of-range samples are clamped to the range's
ends (reported as ``underflow`` or HIGH).
"""

from __future__ import annotations

import math

import numpy as np

LOW = 1e-6
"""Smallest resolved value (a latency: seconds, 1 us)."""
HIGH = 100.0
"""Largest resolved value (a latency: 100 s)."""
BINS = 800
"""Logarithmic bins between LOW and HIGH (plus one underflow and one overflow bin)."""
_LOG_G = math.log(HIGH / LOW) / BINS


def bin_of(values: np.ndarray) -> np.ndarray:
    """(n,) int: the bin of each value (0 underflow, BINS + 1 overflow)."""
    s = np.asarray(values, np.float64)
    with np.errstate(invalid="ignore"):
        f = np.floor(np.log(np.maximum(s, LOW * 0.5) / LOW) / _LOG_G)
    b = np.clip(np.nan_to_num(f, nan=-1.0, posinf=BINS + 1.0), -1, BINS + 1).astype(np.int64) + 1  # +inf: overflow
    b[~(s >= LOW)] = 0  # also NaN
    return np.minimum(b, BINS + 1)


def quantile(counts: np.ndarray, p: float, underflow: float = LOW) -> float:
    """The p-quantile (0 < p <= 1) of the samples counted in ``counts`` (BINS + 2,); NaN when empty.
    The ``ceil(p * n)``-th smallest sample's bin, at its geometric midpoint; ``underflow`` is what
    the underflow bin reports (LOW for latencies; 0 for quantities that are often exactly 0)."""
    counts = np.asarray(counts, np.float64)
    n = counts.sum()
    if n <= 0:
        return math.nan
    rank = max(math.ceil(p * n), 1)
    b = int(np.searchsorted(np.cumsum(counts), rank))
    if b == 0:
        return underflow
    if b >= BINS + 1:
        return HIGH
    return LOW * math.exp((b - 0.5) * _LOG_G)


class LogHistogram:
    """Counts of positive samples in log bins; ``add`` samples, ``merge`` another's counts, ``quantile``."""

    def __init__(self) -> None:
        self.counts = np.zeros(BINS + 2, np.int64)

    def __len__(self) -> int:
        return int(self.counts.sum())

    def add(self, values) -> None:
        s = np.atleast_1d(np.asarray(values, np.float64))
        if len(s):
            np.add.at(self.counts, bin_of(s), 1)

    def merge(self, counts: np.ndarray) -> None:
        self.counts += np.asarray(counts, np.int64)

    def quantile(self, p: float, underflow: float = LOW) -> float:
        return quantile(self.counts, p, underflow)

    def reset(self) -> None:
        self.counts[:] = 0
