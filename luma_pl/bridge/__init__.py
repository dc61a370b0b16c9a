"""Bridges from a source embedding space into the canonical one (docs/design.md section 3)."""

from luma_pl.bridge.drift import DriftReport
from luma_pl.bridge.procrustes import ProcrustesConfig, StreamingProcrustes

__all__ = ["DriftReport", "ProcrustesConfig", "StreamingProcrustes"]
