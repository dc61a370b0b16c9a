"""Per-query latency histogram: quantiles within the documented bin resolution of numpy's exact
quantile of the pooled samples; merging is adding counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from luma_pl.telemetry.latency import BINS, HIGH, LOW, LatencyHistogram, bin_of, quantile

G = (HIGH / LOW) ** (1 / BINS)


@pytest.mark.parametrize("seed", range(5))
def test_quantiles_are_within_the_bin_resolution_of_the_exact_ones(seed):
    rng = np.random.default_rng(seed)
    x = np.exp(rng.normal(math.log(2e-4), 1.5, size=rng.integers(1, 20000)))  # ~ 0.2 ms, heavy tail
    h = LatencyHistogram()
    h.add(x)
    assert len(h) == len(x)
    for p in (0.01, 0.5, 0.9, 0.99, 1.0):
        exact = float(np.quantile(x, p, method="inverted_cdf"))  # the ceil(p n)-th smallest
        if LOW <= exact < HIGH:
            assert h.quantile(p) / exact == pytest.approx(1.0, abs=math.sqrt(G) - 1 + 1e-12)


def test_merge_is_the_histogram_of_the_pooled_samples():
    rng = np.random.default_rng(7)
    a, b = rng.uniform(1e-5, 1e-2, 300), rng.uniform(1e-4, 1.0, 500)
    ha, hb, pooled = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    ha.add(a)
    hb.add(b)
    pooled.add(np.concatenate([a, b]))
    ha.merge(hb.counts)
    assert np.array_equal(ha.counts, pooled.counts)


def test_edges_empty_and_out_of_range():
    assert math.isnan(quantile(np.zeros(BINS + 2), 0.5))
    assert bin_of(np.array([0.0, -1.0, np.nan, LOW / 10]))[:4].tolist() == [0, 0, 0, 0]
    assert bin_of(np.array([HIGH, 1e9])).tolist() == [BINS + 1, BINS + 1]
    h = LatencyHistogram()
    h.add([1e-9, 1e9])
    assert h.quantile(0.5) == LOW and h.quantile(1.0) == HIGH
    # a value at a bin's lower edge lands in that bin
    edge = LOW * G**10
    assert bin_of(np.array([edge * (1 + 1e-9)]))[0] == 11


def test_infinite_and_zero_samples_land_in_the_end_bins():
    from luma_pl.telemetry.log_histogram import LogHistogram

    h = LogHistogram()
    h.add([0.0, np.inf, 1e-3, np.nan])
    assert h.counts[0] == 2 and h.counts[-1] == 1 and len(h) == 4
    assert h.quantile(0.25, underflow=0.0) == 0.0 and h.quantile(1.0) == HIGH
