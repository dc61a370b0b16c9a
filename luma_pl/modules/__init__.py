"""LightningModules that train and validate bridges on replay batches (docs/architecture.md)."""

from luma_pl.modules.bridge_module import ClosedFormDDPStrategy, ProcrustesBridgeModule
from luma_pl.modules.common import BridgeModuleConfig
from luma_pl.modules.learned_bridge_module import LearnedBridgeModule

__all__ = ["BridgeModuleConfig", "ClosedFormDDPStrategy", "LearnedBridgeModule", "ProcrustesBridgeModule"]
