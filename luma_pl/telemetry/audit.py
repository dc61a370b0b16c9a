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
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

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

    def as_metrics(self, prefix: str = "audit/") -> dict[str, float]:
        skip = {"epsilon_source"}
        return {prefix + f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip}


class OnlineAudit:
    """Call ``observe(bridge, memory)`` at every bridge refresh (first call only takes a snapshot)."""

    def __init__(self, probes, k: int = 10, candidates: int | None = None, epsilon_source: str = "interval",
                 epsilon_value: float | None = None, rescore: bool = False, distances: str = "vectors") -> None:
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
        self.totals = {"violations": 0, "violations_within_epsilon": 0, "certified": 0,
                       "flips_uncertified": 0, "uncertified": 0}
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
            report = AuditReport(
                refresh=self.refreshes, probes=len(flip), certified=int(certified.sum()),
                violations=int(viol.sum()), violations_within_epsilon=int((viol & held).sum()),
                uncertified=int(unc.sum()), flips_uncertified=int((flip & unc).sum()),
                flip_rate=float((flip & unc).sum() / unc.sum()) if bool(unc.any()) else float("nan"),
                flips_total=int(flip.sum()), epsilon_source=self.epsilon_source_used,
                epsilon_used=self.eps_prev_value,
                epsilon_used_q_max=float(finite_eps.max()) if len(finite_eps) else float("inf"),
                realised_q_max=float(realised.max()), epsilon_held=float(held.double().mean()),
                safe_at_1_rate=float(certified.double().mean()),
            )
            for key in self.totals:
                self.totals[key] += getattr(report, key)
            self.last = report
        self.q_prev, self.eps_prev, self.eps_prev_value = q_new, eps_new, choice.value
        self.epsilon_source_used = choice.source
        self.refreshes += 1
        return report

    # checkpoint state: tensors and primitives only
    def state_dict(self) -> dict:
        # the probe set is part of the state: q_prev rows are these probes, bridged
        return {"probes": self.probes, "q_prev": self.q_prev, "eps_prev": self.eps_prev, "eps_prev_value": self.eps_prev_value,
                "refreshes": self.refreshes, "totals": dict(self.totals),
                "epsilon_source_used": getattr(self, "epsilon_source_used", self.epsilon_source)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("probes") is not None:
            self.probes = torch.as_tensor(state["probes"], dtype=torch.float32)
        self.q_prev = state.get("q_prev")
        self.eps_prev = state.get("eps_prev")
        self.eps_prev_value = float(state.get("eps_prev_value", float("nan")))
        self.refreshes = int(state.get("refreshes", 0))
        self.totals.update(state.get("totals", {}))
        self.epsilon_source_used = state.get("epsilon_source_used", self.epsilon_source)


__all__ = ["AuditReport", "OnlineAudit"]
