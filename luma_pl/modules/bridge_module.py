"""ProcrustesBridgeModule: streaming Procrustes under Lightning, no gradients (manual optimisation).

training_step accumulates the batch's anchor pairs (rows where both spaces are present) into the
bridge; the bridge itself all-reduces increments every ``sync_every`` steps and refreshes W every
``refresh_every`` global pairs (see luma_pl/bridge/procrustes.py). Its whole state (statistics,
counts, W, W_prev, W_ref, schedule position) is buffers of ``self.bridge``, so it is in every
Lightning checkpoint and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch.strategies import DDPStrategy

from luma_pl.bridge.procrustes import ProcrustesConfig, StreamingProcrustes
from luma_pl.memory import MemoryConfig
from luma_pl.modules.common import BridgeModuleBase, BridgeModuleConfig, as_config


class ProcrustesBridgeModule(BridgeModuleBase):
    def __init__(self, bridge: ProcrustesConfig | None = None, module: BridgeModuleConfig | None = None,
                 encoders: dict | None = None, memory: MemoryConfig | None = None, memory_dir: str | None = None) -> None:
        super().__init__()
        bcfg = as_config(ProcrustesConfig, bridge)
        self.cfg = as_config(BridgeModuleConfig, module)
        # hparams as plain dicts: checkpoints stay loadable with weights_only=True
        self.automatic_optimization = False
        self.bridge = StreamingProcrustes(bcfg)
        self.dims = {self.cfg.source_space: bcfg.d_s, self.cfg.query_space: bcfg.d_s,
                     self.cfg.canonical_space: bcfg.d_c, self.cfg.item_space: bcfg.d_c}
        self._set_encoders(encoders)
        self._set_memory(memory, memory_dir)
        self.save_init_hparams(bridge=bcfg.to_dict(), module=self.cfg.to_dict())

    def configure_optimizers(self):
        return None  # closed-form solve: nothing to optimise

    def bridge_ready(self) -> bool:
        return int(self.bridge.refreshes) > 0

    def training_step(self, batch: dict, batch_idx: int) -> None:
        with torch.no_grad():
            s, c = self.pairs(batch)  # (n, d_s), (n, d_c); n = 0 on padding batches
            self.score_before_learning(s, c)  # test, then train (prequential)
            refreshed = self.bridge.fit_step(s, c)  # joins the increment all-reduce on schedule
        self.ingest_items(batch)  # the stream's items, through admission, into the memory
        self.ask_stream_queries(batch)  # the stream's queries record hits for tier migration
        self.log("train/pairs", float(self.bridge.pairs_total), on_step=True, on_epoch=False)
        if refreshed:
            self._log_refresh()
        return None

    def _log_refresh(self) -> None:
        eps = self.bridge.epsilon()
        self.log("train/refreshes", float(self.bridge.refreshes), on_step=True, on_epoch=False)
        if math.isfinite(eps):
            self.log("train/epsilon", eps, on_step=True, on_epoch=False)
        ref = self.bridge.drift_from_reference()
        if math.isfinite(ref):
            self.log("train/drift_from_reference", ref, on_step=True, on_epoch=False)

    def on_train_epoch_end(self) -> None:
        # the pairs since the last refresh (and of the last partial sync window) must not wait for the
        # next epoch, nor be missing from the final checkpoint (StreamCheckpoint writes in
        # on_train_end, after this hook). flush() decides on all-reduced counts: all ranks or none.
        if self.bridge.flush():
            self.log("train/refreshes", float(self.bridge.refreshes), on_step=False, on_epoch=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning writes rank 0's state only: merge every rank's pending increment first, or the
        # other ranks' unsynced pairs would be missing on resume. Every rank dumps the checkpoint,
        # so this collective is joined by all; merging early only reorders float additions.
        super().on_save_checkpoint(checkpoint)
        if self.bridge.config.sync_every > 1:
            self.bridge.sync_increment()



class ClosedFormDDPStrategy(DDPStrategy):
    """Lightning DDP for luma-pl modules, closed-form (ProcrustesBridgeModule) or learned.

    torch's DistributedDataParallel refuses a module without gradients, and there are none to
    synchronise: the bridge does its own all-reduce. This sets up the process group, samplers and
    collectives exactly as DDP does and only skips the wrapper for such a module (a learned bridge
    is wrapped as usual). On CUDA the process group is 'cpu:gloo,cuda:nccl' unless
    ``process_group_backend`` says otherwise: luma-pl's own collectives move CPU tensors.
    Usage: ``Trainer(strategy=ClosedFormDDPStrategy(start_method="spawn"), devices=2)``, or by its
    registered name in a config: ``trainer.strategy: ddp_closed_form``.
    """

    strategy_name = "ddp_closed_form"

    def _get_process_group_backend(self) -> str:
        # The memory, admission, replay and evaluation collectives exchange CPU tensors (ids, counts,
        # packed shards); NCCL only moves CUDA tensors. On GPUs one process group with a backend per
        # device type carries both: CPU tensors over gloo, CUDA tensors (the bridge's) over NCCL.
        if self._process_group_backend:
            return self._process_group_backend
        if self.root_device.type == "cuda":
            return "cpu:gloo,cuda:nccl"
        return super()._get_process_group_backend()

    def _setup_model(self, model):
        if any(p.requires_grad for p in model.parameters()):
            return super()._setup_model(model)
        return model

    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        strategy_registry.register(cls.strategy_name, cls, description="DDP for closed-form (gradient-free) bridges")


def _register() -> None:
    from lightning.pytorch.strategies import StrategyRegistry

    if ClosedFormDDPStrategy.strategy_name not in StrategyRegistry:
        ClosedFormDDPStrategy.register_strategies(StrategyRegistry)


_register()
