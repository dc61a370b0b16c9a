"""StreamingProcrustes: a stateful shell over ``functional`` (docs/design.md section 3).

State (all buffers, so ``state_dict`` is tensors + one primitive dict and restores exactly):
  total:   decayed statistics every rank agrees on (merged at each ``sync_increment``)
  pending: this rank's decayed increment since the last sync
  W:       (d_c, d_s) semi-orthogonal U V^T of the last refresh
  A, b:    the applied map ``f(s) = A s + b`` (A = rho W; b = mu_c - A mu_s; b = 0 uncentred);
           ``forward`` returns ``f(s) / ||f(s)||``, exactly the map that was fitted
  A_prev, b_prev: the map of the previous refresh (for epsilon = drift over the last interval)
  A_ref,  b_ref:  the reference map (the bridge that produced what is stored)

Decay under DDP: every fit_step multiplies both total and pending by lam, then adds the batch to
pending; a sync adds the all-reduced pending to total. By linearity this is exactly
``M_t = lam M_{t-1} + sum over all ranks' batch t``, i.e. one process on the union of the batches.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from torch import nn

from luma_pl.bridge import functional as F
from luma_pl.bridge.drift import DriftReport
from luma_pl.bridge.state_checks import FIX, check_state
from luma_pl.configuration import StrictConfig, require
from luma_pl.ranks import world_size

_STATS = ("M", "weight", "sum_c", "sum_s", "sq_s")
_COUNTERS = ("steps", "pairs_total", "pairs_pending", "pairs_at_refresh", "refreshes", "has_ref")


@dataclasses.dataclass
class ProcrustesConfig(StrictConfig):
    d_s: int = 256
    """Source-space dimension (the space being bridged, e.g. CLAP / wordllama)."""
    d_c: int = 384
    """Canonical-space dimension (e.g. CLIP / minilm)."""
    lam: float = 1.0
    """Forgetting factor per fit_step in (0, 1]; 1 keeps every pair forever."""
    refresh_every: int = 1024
    """Refresh W once this many (global) pairs arrived since the last refresh; 0 = only on demand."""
    sync_every: int = 1
    """fit_steps between all-reduces of the per-rank increment; refresh decisions happen at syncs."""
    center: bool = False
    """Fit ``c - mu_c ~ W (s - mu_s)`` with decayed anchor means, and apply the same offsets at query time."""
    scale: bool = False
    """Also fit an isotropic scale rho (Umeyama); only meaningful with center (normalisation removes it otherwise)."""
    proper_rotation: bool = False
    """Constrain W to det = +1 (square bridges only)."""
    reference: str = "first_refresh"
    """When W_ref is set: ``"first_refresh"`` (automatically) or ``"manual"`` (only ``set_reference()``)."""

    def validate(self) -> None:
        n = "ProcrustesConfig"
        require(self.d_s >= 1, n, "d_s", self.d_s, "use the source embedding dimension (>= 1)")
        require(self.d_c >= 1, n, "d_c", self.d_c, "use the canonical embedding dimension (>= 1)")
        require(0.0 < self.lam <= 1.0, n, "lam", self.lam, "use a value in (0, 1]; 1.0 = no forgetting")
        require(self.refresh_every >= 0, n, "refresh_every", self.refresh_every, "use >= 1 pairs, or 0 for on-demand only")
        require(self.sync_every >= 1, n, "sync_every", self.sync_every, "use >= 1 fit steps")
        require(not self.scale or self.center, n, "scale", self.scale,
                "a scale changes nothing after normalisation without centring: set center=True or scale=False")
        require(not self.proper_rotation or self.d_s == self.d_c, n, "proper_rotation", self.proper_rotation,
                f"det is undefined for d_c={self.d_c} != d_s={self.d_s}: set proper_rotation=False")
        require(self.reference in ("first_refresh", "manual"), n, "reference", self.reference,
                "use 'first_refresh' or 'manual'")


class StreamingProcrustes(nn.Module):
    """Streaming orthogonal Procrustes bridge ``s (N, d_s) -> q (N, d_c)`` with drift tracking."""

    def __init__(self, config: ProcrustesConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = ProcrustesConfig.from_dict(kwargs)
        elif kwargs:
            raise ValueError(f"pass either config or keyword fields, not both (got extra {sorted(kwargs)})")
        config.validate()
        self.config = config
        d_c, d_s = config.d_c, config.d_s
        f64 = dict(dtype=F.ACC_DTYPE)
        for prefix in ("total_", "pending_"):
            for name, t in zip(_STATS, F.zeros(d_c, d_s), strict=False):
                self.register_buffer(prefix + name, t)
        for name in ("W", "A", "A_prev", "A_ref"):
            self.register_buffer(name, torch.zeros(d_c, d_s, **f64))
        for name in ("b", "b_prev", "b_ref"):
            self.register_buffer(name, torch.zeros(d_c, **f64))
        for name in _COUNTERS:
            self.register_buffer(name, torch.zeros((), dtype=torch.int64))

    # --- statistics -------------------------------------------------------------------------
    def _stats(self, prefix: str) -> F.Stats:
        return F.Stats(*(getattr(self, prefix + n) for n in _STATS))

    def _set_stats(self, prefix: str, stats: F.Stats) -> None:
        for n, t in zip(_STATS, stats, strict=False):
            getattr(self, prefix + n).copy_(t)

    @torch.no_grad()
    def fit_step(self, s: torch.Tensor, c: torch.Tensor) -> bool:
        """Accumulate anchor pairs ``s`` (N, d_s), ``c`` (N, d_c); N may be 0 (still counts as a step).

        Every rank must call this the same number of times: every ``sync_every`` steps it joins an
        all-reduce, then refreshes when ``refresh_every`` global pairs arrived. Returns True if it refreshed.
        """
        cfg = self.config
        F.check_pairs(c, s, cfg.d_c, cfg.d_s)
        lam = cfg.lam
        if world_size() == 1 and cfg.sync_every == 1:
            # single process, sync every step: pending would be exactly the batch term, so add it
            # to the totals directly (same float operations, no extra (d_c, d_s) passes)
            F.accumulate_(self._stats("total_"), c, s, lam)
            self.pairs_total += c.shape[0]
        else:
            F.accumulate_(self._stats("pending_"), c, s, lam)
            if lam != 1.0:  # the merged totals age with every step too (see module docstring)
                for t in self._stats("total_"):
                    t.mul_(lam)
            self.pairs_pending += c.shape[0]
        self.steps += 1
        if int(self.steps) % cfg.sync_every != 0:
            return False
        self.sync_increment()
        if self.refresh_due():
            self.refresh(sync=False)
            return True
        return False

    @torch.no_grad()
    def sync_increment(self, group=None) -> None:
        """Sum every rank's pending increment (one all-reduce) and merge it into the totals.

        A collective under torch.distributed: all ranks must call it together. Without an
        initialised process group it only merges locally.
        """
        pend = self._stats("pending_")
        if world_size() == 1:
            if int(self.pairs_pending) == 0:  # nothing pending: the pending statistics are exactly 0
                return
            for total, p in zip(self._stats("total_"), pend, strict=False):
                total.add_(p)
                p.zero_()
            self.pairs_total += self.pairs_pending
            self.pairs_pending.zero_()
            return
        # one all-reduce for everything: the statistics and the pair count, flattened (float64)
        flat = torch.cat([t.reshape(-1) for t in pend] + [self.pairs_pending.to(F.ACC_DTYPE).reshape(1)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        i = 0
        for total, p in zip(self._stats("total_"), pend, strict=False):
            total.add_(flat[i : i + p.numel()].view_as(p))
            p.zero_()
            i += p.numel()
        self.pairs_total += int(round(float(flat[-1])))  # exact: float64 holds integers < 2**53
        self.pairs_pending.zero_()

    def refresh_due(self) -> bool:
        r = self.config.refresh_every
        return r > 0 and int(self.pairs_total - self.pairs_at_refresh) >= r

    def flush(self) -> bool:
        """End of a stream or epoch: merge every rank's pending pairs (collective when ``sync_every``
        > 1) and refresh if any pair arrived since the last refresh, so the final W is fitted on every
        pair (a batch size that does not divide ``refresh_every`` would otherwise leave the tail out).
        The decision depends on the all-reduced count only, so every rank refreshes or none does.
        Returns True if it refreshed."""
        if self.config.sync_every > 1:
            self.sync_increment()
        if int(self.pairs_total - self.pairs_at_refresh) > 0:
            self.refresh(sync=False)
            return True
        return False

    # --- solving -------------------------------------------------------------------------------
    @torch.no_grad()
    def refresh(self, sync: bool = True) -> torch.Tensor:
        """Solve W from the (synced) totals now. ``sync=True`` first joins ``sync_increment`` (collective)."""
        if sync:
            self.sync_increment()
        cfg = self.config
        stats = self._stats("total_")
        if float(stats.weight) <= 0:
            raise ValueError("refresh() with no anchor pairs accumulated; call fit_step(s, c) with pairs first")
        W = F.solve(F.centred_cross(stats, cfg.center), proper_rotation=cfg.proper_rotation)
        rho = F.scale_factor(stats, W, cfg.center) if cfg.scale else 1.0
        if cfg.center:
            A, b = F.affine(W, stats.sum_c / stats.weight, stats.sum_s / stats.weight, rho)
        else:
            A, b = F.affine(W, rho=rho)[0], torch.zeros_like(self.b)
        self.A_prev.copy_(self.A)
        self.b_prev.copy_(self.b)
        self.W.copy_(W)
        self.A.copy_(A)
        self.b.copy_(b)
        self.refreshes += 1
        self.pairs_at_refresh.copy_(self.pairs_total)
        if cfg.reference == "first_refresh" and not bool(self.has_ref):
            self.set_reference()
        return self.W

    def set_reference(self) -> None:
        """Make the current map the reference (call when stored vectors were produced with it)."""
        self._require_fitted("set_reference")
        self.A_ref.copy_(self.A)
        self.b_ref.copy_(self.b)
        self.has_ref.fill_(1)

    def _require_fitted(self, what: str) -> None:
        if int(self.refreshes) == 0:
            raise RuntimeError(
                f"{what}: the bridge has no W yet (refreshes=0); fit_step(s, c) pairs and refresh() first"
            )

    # --- query time ------------------------------------------------------------------------
    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Bridge ``s`` (N, d_s) -> unit rows (N, d_c) with exactly the fitted map."""
        self._require_fitted("forward")
        b = self.b if self.config.center else None
        return F.apply(self.A, s.to(self.A.device), b)

    @property
    def pairs_seen(self) -> int:
        """Pairs fitted, including this rank's not-yet-synced ones."""
        return int(self.pairs_total + self.pairs_pending)

    # --- drift ----------------------------------------------------------------------------------
    def _drift_to(self, A_o: torch.Tensor, b_o: torch.Tensor) -> float:
        if self.config.center:
            return float(F.affine_drift(self.A, self.b, A_o, b_o))
        return float(F.drift(self.A, A_o))

    def epsilon(self) -> float:
        """``||W_t - W_{t-R}||_2``: the drift over the last refresh interval; inf before two refreshes."""
        if int(self.refreshes) < 2:
            return float("inf")
        return self._drift_to(self.A_prev, self.b_prev)

    def drift_from_reference(self) -> float:
        """``||W_t - W_ref||_2``; inf while no reference is set."""
        if not bool(self.has_ref):
            return float("inf")
        return self._drift_to(self.A_ref, self.b_ref)

    def drift(self, against: str = "reference") -> DriftReport:
        """Common bridge interface; ``against`` is ``"reference"`` or ``"interval"``."""
        if against not in ("reference", "interval"):
            raise ValueError(f"against={against!r}: use 'reference' or 'interval'")
        value = self.drift_from_reference() if against == "reference" else self.epsilon()
        method = "affine_bound" if self.config.center else "spectral_norm"
        return DriftReport(value, against, method, certificate_applies=True)

    # --- checkpoint state ---------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # a checkpoint is untrusted data: refuse NaN/inf, shapes other than the config's (d_c, d_s),
        # negative counts and a W that is not semi-orthogonal before any of it is copied in
        nonneg = dict(min_value=0)
        ranges = {n: nonneg for n in _COUNTERS}
        ranges["has_ref"] = dict(min_value=0, max_value=1)
        for p in ("total_", "pending_"):
            ranges[p + "weight"] = nonneg
            ranges[p + "sq_s"] = nonneg
        check_state(self, state_dict, prefix, ranges)
        total, at = state_dict.get(prefix + "pairs_total"), state_dict.get(prefix + "pairs_at_refresh")
        if isinstance(total, torch.Tensor) and isinstance(at, torch.Tensor) and int(at) > int(total):
            raise ValueError(f"bridge state tensor {prefix + 'pairs_at_refresh'!r} is {int(at)}, above "
                             f"{prefix + 'pairs_total'!r} = {int(total)}; {FIX}")
        W, refreshes = state_dict.get(prefix + "W"), state_dict.get(prefix + "refreshes")
        if isinstance(W, torch.Tensor) and isinstance(refreshes, torch.Tensor) and int(refreshes) > 0:
            Wd = W.double()
            gram = Wd.T @ Wd if Wd.shape[0] >= Wd.shape[1] else Wd @ Wd.T
            err = float((gram - torch.eye(gram.shape[0], dtype=gram.dtype)).abs().max())
            if err > 1e-4:
                raise ValueError(f"bridge state tensor {prefix + 'W'!r} is not semi-orthogonal (max |WᵀW - I| = "
                                 f"{err:.3g}, at most 1e-4 for a refreshed bridge); {FIX}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def get_extra_state(self) -> dict:
        return {"config": self.config.to_dict()}

    def set_extra_state(self, state: dict) -> None:
        cfg = ProcrustesConfig.from_dict(state["config"])
        if (cfg.d_c, cfg.d_s) != (self.config.d_c, self.config.d_s):
            raise ValueError(
                f"checkpoint bridge has (d_c, d_s)=({cfg.d_c}, {cfg.d_s}) but this bridge has "
                f"({self.config.d_c}, {self.config.d_s}); build the bridge with the checkpoint's dims"
            )
        self.config = cfg
