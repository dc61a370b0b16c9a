"""Calibrated Safe@k: a drift bound at confidence 1 - α from the drift that recent refreshes realised.

The worst-case certificate (``functional.py``) takes ε = the spectral norm of the bridge's change, the
worst case over every direction of the source space; on real streams it certifies nothing while the
bridge still learns. This mode labels itself *calibrated*: it never enters the worst-case numbers.

Quantity. For a probe query a and a refresh t -> t+1 the realised drift in normalised-score units is
``r = sin ∠(q_t, q_t+1)`` (``audit.py``: the smallest perturbation of the unit query that reproduces
the new ranking; the certificate's ε_q is in the same units). The calibration window holds the r of
the last ``window`` probe-refreshes.

Bound (split conformal). If the next refresh's drifts r_new are exchangeable with the n values in
the window, then ``P(r_new > r_(m)) <= α`` for ``m = ceil((n + 1)(1 - α))``, the m-th smallest
window value (Vovk et al.; Lei et al. 2018, Theorem 2.1); with ``m > n`` no finite bound exists at
that α and the mode certifies nothing (ε = inf). ``conformal_quantile`` computes it.

Certificate. Safe@k at ε = ``r_(m)`` (the same ``certify`` sequence, only ε differs) holds under every
drift up to r_(m), so a calibrated-safe answer flips only if r_new > r_(m): over queries drawn like
the probes, ``P(calibrated-safe and flipped) <= P(r_new > r_(m)) <= α``. The rate *among*
calibrated-safe answers, which the audit reports, is that probability divided by the safe share, so
it may exceed α when few answers are safe; the audit gives both, each with a Clopper-Pearson interval.

Where the assumption fails: a sudden topic shift (queries or anchors from a new region) makes the
next refresh move the map more than any recent one did; the window then under-states the drift, and
the audit's realised flip rate rises above α. tests/luma_pl/telemetry/test_calibrated.py shows the
audit flagging exactly that on a stream with a topic jump.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np


def conformal_quantile(values: np.ndarray, alpha: float) -> float:
    """The split-conformal (1 - α) bound of a window of drifts: its ``ceil((n + 1)(1 - α))``-th
    smallest value; +inf when the window is too small for that α (n < 1/α - 1) or empty."""
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha={alpha!r} must be in (0, 1), e.g. 0.05 for 95% confidence")
    v = np.sort(np.asarray(values, np.float64).ravel())
    v = v[np.isfinite(v)]
    n = len(v)
    m = math.ceil((n + 1) * (1.0 - float(alpha)))
    if n == 0 or m > n:
        return math.inf
    return float(v[m - 1])


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval of a rate (``successes / trials``); (nan, nan) with no trials."""
    from scipy.stats import beta

    k, n = int(successes), int(trials)
    if n <= 0:
        return math.nan, math.nan
    a = 1.0 - float(confidence)
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


class DriftCalibration:
    """The calibration window: realised per-probe drifts of recent refreshes (oldest dropped)."""

    def __init__(self, alpha: float = 0.05, window: int = 2048) -> None:
        conformal_quantile(np.zeros(1), alpha)  # validates alpha
        if int(window) < 1:
            raise ValueError(f"window={window!r} must be >= 1 drift values (e.g. 2048)")
        self.alpha = float(alpha)
        self.window = int(window)
        self._values: deque[float] = deque(maxlen=self.window)

    def __len__(self) -> int:
        return len(self._values)

    def add(self, realised) -> None:
        """Append one refresh's realised drifts (finite ones; an opposite-facing query's inf is a
        drift no bound covers and is kept as the largest finite value seen, 1.0 in these units)."""
        r = np.asarray(realised, np.float64).ravel()
        self._values.extend(np.where(np.isfinite(r), r, 1.0).tolist())

    def epsilon(self) -> float:
        """The calibrated ε at 1 - α (inf until the window is large enough)."""
        return conformal_quantile(np.asarray(self._values), self.alpha)

    def state_dict(self) -> dict:
        """Tensors and primitives only (checkpoints load with ``weights_only=True``)."""
        import torch

        return {"alpha": self.alpha, "window": self.window,
                "values": torch.tensor(list(self._values), dtype=torch.float64)}

    def load_state_dict(self, state: dict) -> None:
        values = state.get("values")
        values = [] if values is None else np.asarray(values, np.float64).ravel().tolist()
        self._values = deque(values, maxlen=self.window)


__all__ = ["DriftCalibration", "clopper_pearson", "conformal_quantile"]
