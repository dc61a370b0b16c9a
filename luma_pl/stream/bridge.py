"""The bridge a stream runs through: any bridge kind, frozen or still learning.

``StreamBridge`` wraps the bridge module a train.py checkpoint holds, whatever its kind
(``StreamingProcrustes``, or a ``LearnedBridge``: linear, orthogonal, MLP), behind the four things a
stream asks of it:

- ``ready()``: it can map queries (a Procrustes bridge only after its first refresh; a learned
  bridge always: its weights are a map from the start);
- ``learn(s, c)``: one step on this rank's anchor pairs, a collective under DDP. Procrustes
  accumulates the pairs (``fit_step``: increments all-reduced, refresh on schedule). A learned bridge
  takes one optimizer step of its own loss: the loss is scaled so that the mean of the ranks'
  gradients is the gradient of the global-batch loss (``LearnedBridge.loss``), so the gradients are
  summed over ranks and divided by the world size, exactly what DDP's gradient average does; every
  rank then applies the same step to the same weights, and the ranks stay identical. Every
  ``refresh_every`` steps the learned bridge ends a drift interval (``mark_interval``): ε of the
  certificate is the certified change of the map over that interval, as ``epsilon()`` returns;
- ``finish()``: the end of the stream (Procrustes: refresh on the pairs since the last refresh);
- ``module``: the ``nn.Module`` itself, which the certificate functions read
  (``luma_pl.telemetry.safe_at_k.bridge_queries`` / ``choose_epsilon``): a GELU MLP has no
  certified drift bound, so its ε is inf and no answer is certified.

``bridge_from_checkpoint`` builds the right module from a checkpoint's ``bridge.*`` state: the kind
and the config come from the checkpoint itself (the module's ``_extra_state``), validated as any
config is, so a checkpoint of any kind loads without the user restating its dimensions.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from luma_pl.bridge.distributed import world_size
from luma_pl.bridge.learned import LearnedBridge, LearnedBridgeConfig
from luma_pl.bridge.procrustes import ProcrustesConfig, StreamingProcrustes

KINDS = ("procrustes", "linear", "orthogonal", "mlp")


def bridge_kind(module: nn.Module) -> str:
    """'procrustes', or the learned bridge's ``config.kind``."""
    if isinstance(module, StreamingProcrustes):
        return "procrustes"
    if isinstance(module, LearnedBridge):
        return module.config.kind
    raise TypeError(f"bridge is a {type(module).__name__}; use a StreamingProcrustes or a LearnedBridge")


def bridge_from_state(state: dict, argument: str) -> nn.Module:
    """The bridge module a ``bridge.*`` state dict (prefix removed) was saved from, with that state loaded.

    The config is the module's own ``_extra_state['config']``: a dict with ``kind`` is a
    ``LearnedBridgeConfig``, one without is a ``ProcrustesConfig``. Anything else (a missing or
    ill-typed config, unknown or ill-typed fields, tensors of the wrong shape) is a ``ValueError``
    naming ``argument``.
    """
    extra = state.get("_extra_state")
    cfg = extra.get("config") if isinstance(extra, dict) else None
    if not isinstance(cfg, dict):
        raise ValueError(f"{argument}: the checkpoint's bridge state has no config (bridge._extra_state['config'] "
                         f"is {type(cfg).__name__}, expected a dict); pass a checkpoint written by train.py")
    try:
        module: nn.Module = (LearnedBridge(LearnedBridgeConfig.from_dict(cfg)) if "kind" in cfg
                             else StreamingProcrustes(ProcrustesConfig.from_dict(cfg)))
        module.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError, KeyError) as err:
        raise ValueError(f"{argument}: the checkpoint's bridge cannot be rebuilt ({type(err).__name__}: {err}); "
                         "pass a checkpoint written by train.py") from err
    return module


class StreamBridge:
    """A bridge module as the stream drives it (see the module docstring)."""

    def __init__(self, module: nn.Module, learn: bool, optimizer_state: dict | None = None,
                 freeze: bool = True) -> None:
        """``freeze``: a bridge that does not learn here has its parameters stop requiring grad
        (False: something else trains it, e.g. Lightning's optimizer in ``train.py``)."""
        self.module = module
        self.kind = bridge_kind(module)
        self.learns = bool(learn)
        self.steps = 0
        self.optimizer: torch.optim.Optimizer | None = None
        if self.learns and isinstance(module, LearnedBridge):
            self.optimizer = module.make_optimizer()
            if optimizer_state is not None:
                try:
                    self.optimizer.load_state_dict(optimizer_state)
                except (TypeError, ValueError, KeyError, RuntimeError) as err:
                    raise ValueError(f"the checkpoint's optimizer state does not fit this bridge's optimizer "
                                     f"({type(err).__name__}: {err}); pass a checkpoint of the same bridge "
                                     "written by train.py") from err
        if isinstance(module, LearnedBridge) and (self.learns or freeze):
            module.requires_grad_(self.learns)
            if not module.config.learn_temperature:
                module.log_scale.requires_grad_(False)

    @property
    def d_s(self) -> int:
        return int(self.module.config.d_s)

    @property
    def d_c(self) -> int:
        return int(self.module.config.d_c)

    def ready(self) -> bool:
        """It maps queries: Procrustes after its first refresh, a learned bridge always."""
        if isinstance(self.module, StreamingProcrustes):
            return int(self.module.refreshes) > 0
        return True

    def set_reference(self) -> None:
        """The bridge as it is now is the reference ε-from-reference is measured against."""
        if self.ready():
            self.module.set_reference()

    def learn(self, s: torch.Tensor, c: torch.Tensor) -> None:
        """One step on this rank's pairs ``s`` (n, d_s), ``c`` (n, d_c), n >= 0. A collective under
        DDP: every rank calls it on every batch. A frozen bridge does nothing."""
        if not self.learns:
            return
        self.steps += 1
        if isinstance(self.module, StreamingProcrustes):
            with torch.no_grad():
                self.module.fit_step(s.double(), c.double())
            return
        # Trainer.test runs its steps under inference mode; learning needs autograd, and the batch's
        # tensors (inference tensors) are cloned into normal ones first
        with torch.inference_mode(False), torch.enable_grad():
            self._gradient_step(s.clone().float(), c.clone().float())
        if self.steps % self.module.config.refresh_every == 0:
            self.module.mark_interval()

    def _gradient_step(self, s: torch.Tensor, c: torch.Tensor) -> None:
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        loss, _ = self.module.loss(s, c)  # a collective under DDP, also for n = 0
        loss.backward()
        world = world_size()
        params = [p for g in opt.param_groups for p in g["params"]]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if world > 1:  # DDP's gradient average, by hand: this loop is not inside DistributedDataParallel
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat)
            flat /= world
            i = 0
            for p in params:
                p.grad.copy_(flat[i : i + p.numel()].view_as(p))
                i += p.numel()
        opt.step()

    def finish(self) -> None:
        """End of the stream: a learning Procrustes bridge refreshes on its last pairs (collective)."""
        if self.learns and isinstance(self.module, StreamingProcrustes):
            self.module.flush()

    def epsilon(self) -> float:
        """Drift over the last interval (inf: not known yet, or no certificate for this bridge)."""
        v = self.module.epsilon()
        return float(v) if v is not None and math.isfinite(v) else math.inf
