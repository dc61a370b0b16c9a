"""LearnedBridgeModule: a learned bridge trained with symmetric InfoNCE (+ MSE) under Lightning.

The loss gathers negatives from every rank with gradient and is scaled so that DDP's gradient
average equals the gradient of the global-batch loss (luma_pl/bridge/learned.py). Padding
batches return a zero loss wired to every parameter, so DDP's gradient all-reduce still runs.
"""

from __future__ import annotations

import math

import torch

from luma_pl.bridge.learned import LearnedBridge, LearnedBridgeConfig
from luma_pl.memory import MemoryConfig
from luma_pl.modules.common import BridgeModuleBase, BridgeModuleConfig, as_config


class LearnedBridgeModule(BridgeModuleBase):
    def __init__(self, bridge: LearnedBridgeConfig | None = None, module: BridgeModuleConfig | None = None,
                 encoders: dict | None = None,
                 memory: MemoryConfig | None = None, memory_dir: str | None = None) -> None:
        super().__init__()
        bcfg = as_config(LearnedBridgeConfig, bridge)
        self.cfg = as_config(BridgeModuleConfig, module)
        self.bridge = LearnedBridge(bcfg)
        # prior: procrustes: a streaming Procrustes on the same pairs, handed to the bridge at each
        # of its refreshes (the learned map starts from it and is pulled toward it; learned.py)
        self.prior_bridge = None
        if bcfg.prior == "procrustes":
            from luma_pl.bridge.procrustes import ProcrustesConfig, StreamingProcrustes

            self.prior_bridge = StreamingProcrustes(ProcrustesConfig(d_s=bcfg.d_s, d_c=bcfg.d_c,
                                                                     refresh_every=bcfg.prior_refresh_every))
        self.dims = {self.cfg.source_space: bcfg.d_s, self.cfg.query_space: bcfg.d_s,
                     self.cfg.canonical_space: bcfg.d_c, self.cfg.item_space: bcfg.d_c}
        self._set_encoders(encoders)
        self._set_memory(memory, memory_dir)
        self.save_init_hparams(bridge=bcfg.to_dict(), module=self.cfg.to_dict())

    def configure_optimizers(self):
        # the bridge's own optimizer (one learning rate, bridge.lr): evaluate.py resumes its state
        return self.bridge.make_optimizer()

    def on_train_start(self) -> None:
        if not bool(self.bridge.has_ref):  # the bridge at the start is what earlier vectors were made with
            self.bridge.set_reference()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        s, c = self.pairs(batch)
        self.score_before_learning(s, c)  # test, then train (prequential)
        warming = self.warming_up()
        if self.prior_bridge is not None:  # joins the Procrustes increment all-reduce on schedule
            with torch.no_grad():
                if self.prior_bridge.fit_step(s.float(), c.float()):
                    self.bridge.set_prior(self.prior_bridge.A, adopt=warming)
        if warming:  # the map is the prior for now (every rank alike: the epoch decides); no step
            self.ingest_items(batch)
            self.ask_stream_queries(batch)
            return None
        loss, parts = self.bridge.loss(s, c)  # a collective under DDP, also for n = 0
        self.ingest_items(batch)  # the stream's items, through admission, into the memory
        self.ask_stream_queries(batch)  # the stream's queries record hits for tier migration
        # mean over ranks of the per-rank values is the global-batch loss
        self.log("train/loss", loss.detach(), sync_dist=True, on_step=True, on_epoch=False)
        self.log("train/logit_scale", parts["logit_scale"], on_step=True, on_epoch=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # ε for Safe@k: the bridge's certified change over the last R optimizer steps (identical on
        # every rank: DDP keeps the weights in step)
        step = int(self.trainer.global_step) if self._trainer is not None else 0
        if step and step % self.bridge.config.refresh_every == 0 and step != getattr(self, "_marked_at", -1):
            self._marked_at = step
            eps = self.bridge.mark_interval()
            if math.isfinite(eps):
                self.log("train/epsilon_interval", eps, on_step=True, on_epoch=False)

    def warming_up(self) -> bool:
        """A prior warm-up pass (``prior_warmup_epochs``): the same on every rank."""
        return self.prior_bridge is not None and self.current_epoch < self.bridge.config.prior_warmup_epochs

    def on_train_epoch_end(self) -> None:
        if self.prior_bridge is not None and self.prior_bridge.flush():  # the pass's last pairs (all ranks)
            self.bridge.set_prior(self.prior_bridge.A, adopt=self.warming_up())
        rep = self.bridge.drift()
        if rep.value is not None and math.isfinite(rep.value):
            self.log("train/drift_from_reference", rep.value)
