"""Online audit of the Safe@k certificate (docs/design.md section 6).

At every bridge refresh a fixed probe set of source queries is bridged again and re-ranked. The
audit keeps, from the previous refresh, each probe's unit query ``q_prev`` and the ε_q its
certificate used (normally the drift of the interval *before* that refresh: an assumption about
the drift to come). At the next refresh it searches the *current* memory with ``q_prev`` and with
the new ``q_new`` (same items, so a flip is due to the bridge alone), certifies the ``q_prev``
answers with the ε_q that was in force, and counts:

- violations: certified top-1 answers that changed. Split by whether the drift that actually
  happened was inside the ε used: the realised per-probe drift is ``sin ∠(q_prev, q_new)``
  (= min over c > 0 of ``||c q_new - q_prev||``, the smallest perturbation in normalised units that
  reproduces the new ranking, since a positive rescaling keeps orders). A violation with realised
  <= ε_q would be a bug in the certificate (must stay 0); one with realised > ε_q means the ε
  assumption failed (reported honestly, with the realised and used ε side by side).
- flips on uncertified probes: the empirical flip rate.
- the calibrated mode (``calibrated.py``, labelled apart, never mixed into the counts above): the
  previous answers certified at the calibrated ε (the split-conformal 1 - α bound of the realised
  drifts of the refreshes before), and how many of them flipped, top-1 and top-k set, with
  Clopper-Pearson intervals; then this refresh's realised drifts join the calibration window.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from luma_pl.telemetry.calibrated import DriftCalibration, clopper_pearson
from luma_pl.telemetry.functional import top_changed
from luma_pl.telemetry.safe_at_k import bridge_queries, certify_search, choose_epsilon, query_epsilon


@dataclasses.dataclass(frozen=True)
class AuditReport:
    refresh: int
    probes: int
    certified: int
    """Probes whose previous top-1 was certified (Safe@1)."""
    violations: int
    """Certified probes whose top-1 changed."""
    violations_within_epsilon: int
    """... of which the realised drift was <= the ε used (a certificate bug if > 0)."""
    uncertified: int
    flips_uncertified: int
    flip_rate: float
    """flips_uncertified / uncertified (nan when none)."""
    flips_total: int
    epsilon_source: str
    epsilon_used: float
    """The bridge-level ε the previous certificate used."""
    epsilon_used_q_max: float
    """Largest per-probe ε_q used."""
    realised_q_max: float
    """Largest per-probe realised drift sin ∠(q_prev, q_new)."""
    epsilon_held: float
    """Share of probes whose realised drift was <= the ε_q used."""
    safe_at_1_rate: float
    """Certified share of the previous answers."""
    calibrated_epsilon: float = float("inf")
    """The calibrated ε (1 - α bound of earlier realised drifts) the previous answers were checked at."""
    calibrated_certified: int = 0
    """Previous answers calibrated-safe at 1 (top-1)."""
    calibrated_flips: int = 0
    """... whose top-1 changed."""
    calibrated_certified_k: int = 0
    """Previous answers calibrated-safe at k (top-k set)."""
    calibrated_flips_k: int = 0
    """... whose top-k set changed."""
    calibrated_exceed: int = 0
    """Probes whose realised drift exceeded the calibrated ε (conformal: at most α of them, if the
    drifts are exchangeable; the direct test of the calibration's assumption)."""
    calibrated_exceed_share: float = 0.0
    """calibrated_exceed / probes (summed over reports in the totals: one value per refresh)."""
    calibrated_exceed_share_sq: float = 0.0
    """Its square (summed in the totals, for the refresh-level interval of ``calibrated_rates``)."""
    audits: int = 1
    """Refreshes audited (1 per report; summed in the totals)."""

    def as_metrics(self, prefix: str = "audit/") -> dict[str, float]:
        skip = {"epsilon_source"}
        return {prefix + f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip}


class OnlineAudit:
    """Call ``observe(bridge, memory)`` at every bridge refresh (first call only takes a snapshot)."""

    def __init__(self, probes, k: int = 10, candidates: int | None = None, epsilon_source: str = "interval",
                 epsilon_value: float | None = None, rescore: bool = False, distances: str = "vectors",
                 alpha: float = 0.05, calibration_window: int = 2048) -> None:
        self.probes = torch.as_tensor(np.asarray(probes), dtype=torch.float32)
        if self.probes.ndim != 2:
            raise ValueError(f"probes has shape {tuple(self.probes.shape)}; pass (P, d_s) source queries")
        self.k = int(k)
        self.candidates = int(candidates or max(2 * k, k + 1))
        if self.candidates < self.k + 1:
            raise ValueError(f"candidates={candidates} must be >= k + 1 = {k + 1} (the closing term needs ŝ_(k+1))")
        self.epsilon_source = epsilon_source
        self.epsilon_value = epsilon_value
        self.rescore = rescore
        self.distances = distances
        self.q_prev: torch.Tensor | None = None
        self.eps_prev: torch.Tensor | None = None
        self.eps_prev_value = float("nan")
        self.refreshes = 0
        self.calibration = DriftCalibration(alpha, calibration_window)
        self.eps_cal_prev = float("inf")
        self.totals = {"violations": 0, "violations_within_epsilon": 0, "certified": 0,
                       "flips_uncertified": 0, "uncertified": 0, "probes": 0, "calibrated_certified": 0,
                       "calibrated_flips": 0, "calibrated_certified_k": 0, "calibrated_flips_k": 0,
                       "calibrated_exceed": 0, "calibrated_exceed_share": 0.0, "calibrated_exceed_share_sq": 0.0,
                       "audits": 0}
        self.last: AuditReport | None = None
        self._searcher = None  # set per observe call

    def _search(self, memory, q: torch.Tensor):
        search = self._searcher or memory.search
        return search(q.numpy().astype(np.float32), self.candidates, rescore=self.rescore, record_hits=False)

    @torch.no_grad()
    def observe(self, bridge, memory, search=None) -> AuditReport | None:
        """``search``: how the stream answers (``StreamRuntime.search``: the prototypes dispatch
        included); default ``memory.search``."""
        self._searcher = search
        q_new, a_norm, u_norm = bridge_queries(bridge, self.probes)
        choice = choose_epsilon(bridge, self.epsilon_source, self.epsilon_value)
        eps_new = query_epsilon(choice, a_norm, u_norm)
        report = None
        if self.q_prev is not None and len(memory):
            prev = self._search(memory, self.q_prev)
            new = self._search(memory, q_new)
            cert = certify_search(prev, self.k, self.eps_prev, memory, rescored=self.rescore, distances=self.distances)
            flip = torch.from_numpy(prev.ids[:, 0] != new.ids[:, 0])
            cos = (self.q_prev.double() * q_new.double()).sum(1).clamp(-1, 1)
            realised = torch.where(cos > 0, (1 - cos * cos).clamp_min(0).sqrt(), torch.full_like(cos, torch.inf))
            held = realised <= self.eps_prev
            certified = cert.safe_at_1
            viol = certified & flip
            unc = ~certified
            finite_eps = self.eps_prev[torch.isfinite(self.eps_prev)]
            cal = certify_search(prev, self.k, torch.full_like(self.eps_prev, self.eps_cal_prev), memory,
                                 rescored=self.rescore, distances=self.distances)
            _, flip_k = top_changed(torch.from_numpy(prev.ids), torch.from_numpy(new.ids), self.k)
            report = AuditReport(
                refresh=self.refreshes, probes=len(flip), certified=int(certified.sum()),
                violations=int(viol.sum()), violations_within_epsilon=int((viol & held).sum()),
                uncertified=int(unc.sum()), flips_uncertified=int((flip & unc).sum()),
                flip_rate=float((flip & unc).sum() / unc.sum()) if bool(unc.any()) else float("nan"),
                flips_total=int(flip.sum()), epsilon_source=self.epsilon_source_used,
                epsilon_used=self.eps_prev_value,
                epsilon_used_q_max=float(finite_eps.max()) if len(finite_eps) else float("inf"),
                realised_q_max=float(realised.max()), epsilon_held=float(held.double().mean()),
                safe_at_1_rate=float(certified.double().mean()), calibrated_epsilon=self.eps_cal_prev,
                calibrated_certified=int(cal.safe_at_1.sum()), calibrated_flips=int((cal.safe_at_1 & flip).sum()),
                calibrated_certified_k=int(cal.safe_at_k.sum()),
                calibrated_flips_k=int((cal.safe_at_k & flip_k).sum()),
                calibrated_exceed=int((realised > self.eps_cal_prev).sum()),
                calibrated_exceed_share=float((realised > self.eps_cal_prev).double().mean()),
                calibrated_exceed_share_sq=float((realised > self.eps_cal_prev).double().mean()) ** 2,
            )
            for key in self.totals:
                self.totals[key] += getattr(report, key)
            self.last = report
            self.calibration.add(realised.numpy())  # after use: calibration comes from earlier refreshes
        self.eps_cal_prev = self.calibration.epsilon()
        self.q_prev, self.eps_prev, self.eps_prev_value = q_new, eps_new, choice.value
        self.epsilon_source_used = choice.source
        self.refreshes += 1
        return report

    # checkpoint state: tensors and primitives only
    def state_dict(self) -> dict:
        # the probe set is part of the state: q_prev rows are these probes, bridged
        return {"probes": self.probes, "q_prev": self.q_prev, "eps_prev": self.eps_prev, "eps_prev_value": self.eps_prev_value,
                "refreshes": self.refreshes, "totals": dict(self.totals),
                "calibration": self.calibration.state_dict(), "eps_cal_prev": self.eps_cal_prev,
                "epsilon_source_used": getattr(self, "epsilon_source_used", self.epsilon_source)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("probes") is not None:
            self.probes = torch.as_tensor(state["probes"], dtype=torch.float32)
        self.q_prev = state.get("q_prev")
        self.eps_prev = state.get("eps_prev")
        self.eps_prev_value = float(state.get("eps_prev_value", float("nan")))
        self.refreshes = int(state.get("refreshes", 0))
        self.totals.update(state.get("totals", {}))
        if state.get("calibration") is not None:
            self.calibration.load_state_dict(state["calibration"])
        self.eps_cal_prev = float(state.get("eps_cal_prev", self.calibration.epsilon()))
        self.epsilon_source_used = state.get("epsilon_source_used", self.epsilon_source)


def calibrated_rates(totals: dict, alpha: float, confidence: float = 0.95) -> dict[str, float]:
    """The calibrated mode's audit from audit totals (or one ``AuditReport``'s fields): the share
    of probes whose realised drift exceeded the calibrated ε (what split conformal bounds by α in
    expectation) and the realised flip rates among calibrated-safe answers (top-1 and top-k set,
    Clopper-Pearson intervals). The probes of one refresh drift together (one map moved), so the
    exceedance interval treats refreshes, not probes, as the independent units: a Student-t interval
    of the per-refresh shares (nan with fewer than 2 refreshes). ``calibrated_assumption_failed`` is
    1 when that interval lies wholly above α (the drifts were not like the calibration window's: a
    topic jump, say)."""
    from scipy.stats import t as student

    out = {"alpha": float(alpha)}
    p = int(totals.get("probes", 0))
    n = int(totals.get("audits", 0))
    mean = float(totals.get("calibrated_exceed_share", 0.0)) / n if n else float("nan")
    if n >= 2:
        var = max(float(totals.get("calibrated_exceed_share_sq", 0.0)) / n - mean * mean, 0.0) * n / (n - 1)
        half = float(student.ppf(0.5 + confidence / 2, n - 1)) * math.sqrt(var / n)
        lo, hi = max(mean - half, 0.0), min(mean + half, 1.0)
    else:
        lo = hi = float("nan")
    out.update(calibrated_exceed_share=mean, calibrated_exceed_share_lo=lo, calibrated_exceed_share_hi=hi,
               calibrated_assumption_failed=float(n >= 2 and lo > alpha), audits=float(n))
    for tag, flips, safe in (("at_1", "calibrated_flips", "calibrated_certified"),
                             ("at_k", "calibrated_flips_k", "calibrated_certified_k")):
        f, n = int(totals.get(flips, 0)), int(totals.get(safe, 0))
        lo, hi = clopper_pearson(f, n, confidence)
        out[f"calibrated_safe_share_{tag}"] = n / p if p else float("nan")
        out[f"calibrated_flip_rate_{tag}"] = f / n if n else float("nan")
        out[f"calibrated_flip_rate_{tag}_lo"], out[f"calibrated_flip_rate_{tag}_hi"] = lo, hi
    return out


__all__ = ["AuditReport", "OnlineAudit", "calibrated_rates"]
