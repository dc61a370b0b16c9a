"""Adaptive admission (u_t, B_t): open up when new labels pour in, settle back when they stop.

After each batch, the novelty rate is the fraction of the last ``window`` arrivals whose label was
not tracked when it arrived. Above ``novelty_threshold``: u_t jumps to ``u_max`` and B_t grows by
``capacity_boost`` x B (up to B x (1 + capacity_boost)). Otherwise both decay geometrically back
to (u, B): u_t <- u + (u_t - u) * decay, B_t <- B + floor((B_t - B) * decay); shrinking B_t evicts
the smallest counts (counted by the counter).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from luma_pl.configuration import StrictConfig, require


def adapt(u_t: float, b_t: int, novelty: float, base_u: float, base_b: int, cfg: AdaptiveConfig) -> tuple[float, int]:
    """Pure step: the next (u_t, B_t) given the window's novelty rate."""
    b_max = int(math.floor(base_b * (1.0 + cfg.capacity_boost)))
    if novelty > cfg.novelty_threshold:
        return max(u_t, cfg.u_max), min(b_max, b_t + max(1, int(round(base_b * cfg.capacity_boost))))
    u_next = base_u + (u_t - base_u) * cfg.decay
    b_next = base_b + int(math.floor((b_t - base_b) * cfg.decay))
    return float(u_next), int(b_next)


@dataclasses.dataclass
class AdaptiveConfig(StrictConfig):
    """Settings of the adaptive (u_t, B_t) controller."""

    enabled: bool = False
    """False: static (u, B)."""
    window: int = 256
    """Arrivals over which the novelty rate (share of untracked labels on arrival) is measured."""
    novelty_threshold: float = 0.2
    """Open up when the novelty rate exceeds this."""
    u_max: float = 0.5
    """u_t while opened up (>= the static u)."""
    capacity_boost: float = 0.5
    """B_t may grow to B x (1 + capacity_boost) while opened up."""
    decay: float = 0.8
    """Per-batch geometric decay of (u_t - u) and (B_t - B) once the stream settles."""

    def validate(self) -> None:
        o = "AdaptiveConfig"
        require(self.window >= 1, o, "window", self.window, "use >= 1 arrivals (e.g. 256)")
        require(0.0 <= self.novelty_threshold <= 1.0, o, "novelty_threshold", self.novelty_threshold,
                "use a rate in [0, 1], e.g. 0.2")
        require(0.0 <= self.u_max <= 1.0, o, "u_max", self.u_max, "use a probability in [0, 1]")
        require(self.capacity_boost >= 0.0, o, "capacity_boost", self.capacity_boost, "use >= 0 (0 = u only)")
        require(0.0 <= self.decay < 1.0, o, "decay", self.decay, "use a factor in [0, 1), e.g. 0.8")


class AdaptiveController:
    """Keeps the recent novelty flags; ``step(counter, novel)`` sets the counter's u_t and B_t."""

    def __init__(self, config: AdaptiveConfig):
        config.validate()
        self.cfg = config
        self.flags = np.zeros(config.window, bool)
        self.filled = 0
        self.pos = 0
        self.openings = 0

    def novelty(self) -> float:
        return float(self.flags[: self.filled].mean()) if self.filled else 0.0

    def step(self, counter, novel: np.ndarray) -> None:
        if not self.cfg.enabled or len(novel) == 0:
            return
        w = self.cfg.window
        novel = np.asarray(novel, bool)[-w:]
        idx = (self.pos + np.arange(len(novel))) % w
        self.flags[idx] = novel
        self.pos = int((self.pos + len(novel)) % w)
        self.filled = int(min(w, self.filled + len(novel)))
        rate = self.novelty()
        u, b = adapt(counter.admit_prob, counter.capacity, rate, counter.cfg.admit_prob, counter.cfg.capacity, self.cfg)
        if rate > self.cfg.novelty_threshold:
            self.openings += 1
        counter.admit_prob = u
        if b != counter.capacity:
            counter.set_capacity(b)

    def state_dict(self) -> dict:
        return {"flags": self.flags.copy(), "filled": self.filled, "pos": self.pos, "openings": self.openings}

    def load_state_dict(self, state: dict) -> None:
        f = state.get("flags")
        if f is not None and np.asarray(f).shape == self.flags.shape:
            self.flags = np.asarray(f, bool).copy()
        for k in ("filled", "pos", "openings"):
            setattr(self, k, int(state.get(k, 0)))
