"""What a bridge says about its own drift (docs/design.md sections 3 and 6).

``DriftReport.value`` bounds ``sup_{||a|| <= 1} ||f_t(a) - f_other(a)||`` for the bridge's
un-normalised map f, which is what the Safe@k certificate needs: for candidates x_i, x_j,
``<f_t(a) - f_other(a), x_i - x_j> <= value * ||x_i - x_j||``. ``value`` is ``None`` exactly when
no bound is known (``certificate_applies=False``) and ``inf`` when the bound would need a bridge
that does not exist yet (e.g. no previous refresh): never a constant stand-in.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class DriftReport:
    value: float | None
    """Upper bound on the map's change over unit inputs; ``inf`` when not yet observable."""
    against: str
    """What the current map is compared with: ``"reference"`` or ``"interval"`` (previous refresh)."""
    method: str
    """How ``value`` was obtained: ``"spectral_norm"``, ``"affine_bound"``, ``"lipschitz_bound"``, ``"none"``."""
    certificate_applies: bool
    """False when ``value`` is not a certified bound (the Safe@k certificate must not use it)."""

    @property
    def finite(self) -> bool:
        return self.value is not None and math.isfinite(self.value)
