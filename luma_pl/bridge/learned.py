"""Learned bridges: linear, orthogonal-parametrised linear and a residual MLP (docs/design.md section 3).

All map source vectors ``s`` (N, d_s) to canonical space (N, d_c) and share the Procrustes
bridge's interface: ``fit_step(s, c)``, ``forward(s)`` (unit rows), ``state_dict``, ``drift()``.
Training loss: symmetric InfoNCE with a learnable temperature (CLIP: logit scale stored as a
log, clamped to [0, ln 100]) plus an optional MSE term; under DDP negatives come from all ranks.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as tf
from torch import nn

from luma_pl.bridge.distributed import gather_rows, world_size
from luma_pl.bridge.drift import DriftReport
from luma_pl.bridge.state_checks import check_state
from luma_pl.configuration import StrictConfig, require
from luma_pl.ring import write_rows

KINDS = ("linear", "orthogonal", "mlp")
PRIORS = ("none", "procrustes")
_ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
# activations with |sigma(x)| <= |x| and Lipschitz constant 1: the MLP drift bound needs both
_CERTIFIED_ACTS = ("relu", "tanh")


@dataclasses.dataclass
class LearnedBridgeConfig(StrictConfig):
    kind: str = "linear"
    """Bridge family: 'linear', 'orthogonal' (orthogonal parametrisation) or 'mlp' (residual MLP)."""
    d_s: int = 256
    """Source-space dimension."""
    d_c: int = 384
    """Canonical-space dimension."""
    hidden: int = 512
    """Hidden width of the MLP's residual branch (mlp only)."""
    activation: str = "relu"
    """MLP activation: 'relu' or 'tanh' (drift certified) or 'gelu' (no certificate)."""
    init_temperature: float = 0.07
    """Initial softmax temperature (CLIP: 0.07, i.e. logit scale 1/0.07)."""
    max_logit_scale: float = 100.0
    """Upper clamp of the logit scale exp(log_scale) (CLIP: 100)."""
    learn_temperature: bool = True
    """Train the temperature; False keeps it at init_temperature."""
    mse_weight: float = 0.0
    """Weight of the MSE term between bridged and canonical unit vectors (0 = InfoNCE only)."""
    gather_negatives: bool = True
    """Under DDP, use every rank's pairs as negatives (gathered with gradient)."""
    lr: float = 1e-3
    """The bridge's one learning rate: AdamW in train.py (``LearnedBridgeModule``), in evaluate.py when
    the bridge keeps learning on the stream, and in the standalone ``fit_step``."""
    weight_decay: float = 0.0
    """AdamW weight decay of the map's weights (never applied to the temperature)."""
    refresh_every: int = 50
    """R: optimizer steps between two drift measurements (``mark_interval``). ε for Safe@k is the
    certified bound on the map's change over the last interval, as for the Procrustes bridge."""
    negative_queue: int = 0
    """MoCo-style negative pool: the canonical vectors of the last this many anchor pairs (detached,
    this rank's) are extra negatives for the bridged-query side of InfoNCE, beyond the batch (and
    the other ranks' rows under DDP). 0 = in-batch negatives only. With a queue, two ranks are no
    longer the same computation as one process (each rank's queue holds its own rows)."""
    prior: str = "none"
    """A closed-form map the learned one starts from and is pulled toward: 'none', or 'procrustes'
    (``LearnedBridgeModule`` keeps a ``StreamingProcrustes`` on the same anchor pairs and hands each
    of its refreshes to ``set_prior``)."""
    prior_refresh_every: int = 256
    """Anchor pairs between two refreshes of the prior (prior: procrustes)."""
    init_from_prior: bool = True
    """With a prior: when it is first set, copy it into the map's linear part (linear / orthogonal:
    the weight; mlp: the residual path, the residual branch staying at zero), so the learned bridge
    starts where the prior is instead of at a random map."""
    prior_warmup_epochs: int = 0
    """With a prior, in train.py: passes over the stream during which the map *is* the prior (set
    at each of its refreshes and at the end of the pass, no gradient steps); learning starts from
    the prior of the whole first pass(es) instead of one fitted on its first pairs. 0 = learn from
    the first batch, starting from the first prior when ``init_from_prior``."""
    prior_weight: float = 0.0
    """λ of the penalty ``λ ||L - W_prior||_F²`` on the map's linear part L (0 = no pull): a
    learned bridge that drifts from the closed-form solution pays for it, the regulariser
    against overfitting the anchors."""

    def validate(self) -> None:
        n = "LearnedBridgeConfig"
        require(self.kind in KINDS, n, "kind", self.kind, f"use one of {KINDS}")
        require(self.d_s >= 1 and self.d_c >= 1, n, "d_s/d_c", (self.d_s, self.d_c), "use positive dimensions")
        require(self.hidden >= 1, n, "hidden", self.hidden, "use a positive hidden width")
        require(self.activation in _ACTS, n, "activation", self.activation, f"use one of {sorted(_ACTS)}")
        require(0 < self.init_temperature, n, "init_temperature", self.init_temperature, "use a positive temperature, e.g. 0.07")
        require(self.max_logit_scale >= 1.0 / self.init_temperature, n, "max_logit_scale", self.max_logit_scale,
                f"must be >= 1/init_temperature = {1.0 / self.init_temperature:.3g}")
        require(self.mse_weight >= 0, n, "mse_weight", self.mse_weight, "use >= 0")
        require(self.lr > 0, n, "lr", self.lr, "use a positive learning rate")
        require(self.weight_decay >= 0, n, "weight_decay", self.weight_decay, "use >= 0")
        require(self.refresh_every >= 1, n, "refresh_every", self.refresh_every, "use R >= 1 optimizer steps (e.g. 50)")
        require(isinstance(self.negative_queue, int) and self.negative_queue >= 0, n, "negative_queue",
                self.negative_queue, "use an int >= 0, e.g. 4096 (0 = in-batch negatives only)")
        require(self.prior in PRIORS, n, "prior", self.prior, f"use one of {PRIORS}")
        require(self.prior_refresh_every >= 1, n, "prior_refresh_every", self.prior_refresh_every,
                "use a positive pair count, e.g. 256")
        require(isinstance(self.prior_warmup_epochs, int) and self.prior_warmup_epochs >= 0, n, "prior_warmup_epochs",
                self.prior_warmup_epochs, "use an int >= 0 (passes over the stream that only fit the prior)")
        require(self.prior != "none" or self.prior_warmup_epochs == 0, n, "prior_warmup_epochs",
                self.prior_warmup_epochs, "a warm-up fits the prior: set prior: procrustes, or prior_warmup_epochs: 0")
        require(self.prior_weight >= 0 and math.isfinite(self.prior_weight), n, "prior_weight", self.prior_weight,
                "use a finite weight >= 0 (0 = no pull toward the prior)")
        require(self.prior != "none" or self.prior_weight == 0, n, "prior_weight", self.prior_weight,
                "a pull toward the prior needs one: set prior: procrustes, or prior_weight: 0")


class ResidualMLP(nn.Module):
    """``f(a) = P a + W2 sigma(W1 a + b1) + b2``; W2 starts at zero so f starts linear."""

    def __init__(self, d_s: int, d_c: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.proj = nn.Linear(d_s, d_c, bias=False)  # the residual path (d_c, d_s)
        self.fc1 = nn.Linear(d_s, hidden)
        self.act = _ACTS[activation]()
        self.fc2 = nn.Linear(hidden, d_c)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.proj(a) + self.fc2(self.act(self.fc1(a)))


def _spec(x: torch.Tensor) -> float:
    """Spectral norm of a matrix, Euclidean norm of a vector (float64)."""
    x = x.detach().double()
    return float(torch.linalg.matrix_norm(x, ord=2) if x.ndim == 2 else torch.linalg.vector_norm(x))


def mlp_drift_bound(t: dict[str, torch.Tensor], r: dict[str, torch.Tensor]) -> float:
    """Certified bound on ``sup_{||a|| <= 1} ||f_t(a) - f_r(a)||`` for two ``ResidualMLP`` weight sets.

    Proof. Let h = W1 a + b1, D = f_t(a) - f_r(a). Then
      D = (P_t - P_r) a + (W2_t - W2_r) sigma(h_t) + W2_r (sigma(h_t) - sigma(h_r)) + (b2_t - b2_r)
    (add and subtract W2_r sigma(h_t)). For sigma in {relu, tanh}: |sigma(x)| <= |x| and sigma is
    1-Lipschitz, elementwise, so ||sigma(h_t)|| <= ||h_t|| <= ||W1_t||_2 + ||b1_t|| and
    ||sigma(h_t) - sigma(h_r)|| <= ||h_t - h_r|| <= ||W1_t - W1_r||_2 + ||b1_t - b1_r|| for ||a|| <= 1.
    By the triangle inequality and ||X y|| <= ||X||_2 ||y||:
      ||D|| <= ||dP|| + ||dW2|| (||W1_t|| + ||b1_t||) + ||W2_r|| (||dW1|| + ||db1||) + ||db2||.
    Every term is an exact spectral/Euclidean norm, so the bound holds for every unit a.
    It is 0 when the weights agree and is tight to first order for the residual path alone.
    """
    d = {k: t[k].double() - r[k].double() for k in t}
    return (_spec(d["proj.weight"])
            + _spec(d["fc2.weight"]) * (_spec(t["fc1.weight"]) + _spec(t["fc1.bias"]))
            + _spec(r["fc2.weight"]) * (_spec(d["fc1.weight"]) + _spec(d["fc1.bias"]))
            + _spec(d["fc2.bias"]))


class LearnedBridge(nn.Module):
    """A trained bridge ``s (N, d_s) -> q (N, d_c)`` with InfoNCE(+MSE) loss and drift vs a reference."""

    def __init__(self, config: LearnedBridgeConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = LearnedBridgeConfig.from_dict(kwargs)
        elif kwargs:
            raise ValueError(f"pass either config or keyword fields, not both (got extra {sorted(kwargs)})")
        config.validate()
        self.config = cfg = config
        if cfg.kind == "mlp":
            self.net: nn.Module = ResidualMLP(cfg.d_s, cfg.d_c, cfg.hidden, cfg.activation)
        else:
            self.net = nn.Linear(cfg.d_s, cfg.d_c, bias=False)
            if cfg.kind == "orthogonal":
                # weight (d_c, d_s) stays semi-orthogonal: orthonormal rows or columns
                self.net = nn.utils.parametrizations.orthogonal(self.net)
        log_scale = torch.tensor(math.log(1.0 / cfg.init_temperature))
        self.log_scale = nn.Parameter(log_scale, requires_grad=cfg.learn_temperature)
        for name, t in self._weights().items():  # reference and interval snapshots, saved with the bridge
            self.register_buffer("ref_" + name.replace(".", "_"), t.detach().clone())
            self.register_buffer("prev_" + name.replace(".", "_"), t.detach().clone())
        self.register_buffer("has_ref", torch.zeros((), dtype=torch.int64))
        if cfg.negative_queue:  # only then (as the prior's): older checkpoints keep their keys
            self.register_buffer("queue", torch.zeros(cfg.negative_queue, cfg.d_c))
            self.register_buffer("queue_filled", torch.zeros((), dtype=torch.int64))
            self.register_buffer("queue_pos", torch.zeros((), dtype=torch.int64))
        if cfg.prior != "none":  # only then: checkpoints of bridges without a prior keep their keys
            self.register_buffer("prior_map", torch.zeros(cfg.d_c, cfg.d_s))
            self.register_buffer("has_prior", torch.zeros((), dtype=torch.int64))
        # Safe@k interface shared with StreamingProcrustes: refreshes counts drift measurements;
        # eps_interval is the last one (inf until the first)
        self.register_buffer("refreshes", torch.zeros((), dtype=torch.int64))
        self.register_buffer("eps_interval", torch.tensor(float("inf"), dtype=torch.float64))
        self._optimizer: torch.optim.Optimizer | None = None

    # --- map ------------------------------------------------------------------------------------
    def _weights(self) -> dict[str, torch.Tensor]:
        """The map's effective weights (the orthogonal parametrisation materialised)."""
        if isinstance(self.net, ResidualMLP):
            return {k: v for k, v in self.net.state_dict().items()}
        return {"weight": self.net.weight}

    def linear_part(self) -> torch.Tensor:
        """The map's linear part L (d_c, d_s): the weight, or the MLP's residual path."""
        return self.net.proj.weight if isinstance(self.net, ResidualMLP) else self.net.weight

    @torch.no_grad()
    def set_prior(self, W: torch.Tensor, adopt: bool = False) -> bool:
        """Take ``W`` (d_c, d_s) as the prior; the first one (every one with ``adopt``: a warm-up)
        is copied into the linear part when ``init_from_prior`` (the orthogonal parametrisation takes
        it through its right inverse: a Procrustes map is semi-orthogonal; the MLP's residual branch
        is set back to zero on adoption). Returns whether the map was set from it."""
        if self.config.prior == "none":
            raise ValueError("set_prior: this bridge has prior='none'; build it with prior: procrustes")
        W = W.detach().to(self.prior_map.dtype)
        if tuple(W.shape) != tuple(self.prior_map.shape) or not bool(torch.isfinite(W).all()):
            raise ValueError(f"set_prior: W has shape {tuple(W.shape)} (finite: {bool(torch.isfinite(W).all())}); "
                             f"expected a finite ({self.config.d_c}, {self.config.d_s}) map")
        first = not bool(self.has_prior)
        self.prior_map.copy_(W)
        self.has_prior.fill_(1)
        if (first or adopt) and self.config.init_from_prior:
            if isinstance(self.net, ResidualMLP):
                self.net.fc2.weight.zero_()
                self.net.fc2.bias.zero_()
            if nn.utils.parametrize.is_parametrized(self.net):
                self.net.weight = W.clone()  # the orthogonal parametrisation: through its right inverse
            else:
                self.linear_part().copy_(W)
            return True
        return False

    def raw(self, s: torch.Tensor) -> torch.Tensor:
        """Un-normalised map ``f(s)``: (N, d_s) -> (N, d_c)."""
        if s.ndim != 2 or s.shape[1] != self.config.d_s:
            raise ValueError(f"s has shape {tuple(s.shape)} but the bridge expects (N, {self.config.d_s}); pass source-space vectors")
        return self.net(s.to(self.log_scale.dtype))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Bridged unit rows (N, d_c)."""
        return tf.normalize(self.raw(s), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.clamp(0.0, math.log(self.config.max_logit_scale)).exp()

    # --- loss ---------------------------------------------------------------------------------
    def loss(self, s: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Symmetric InfoNCE (+ MSE) on pairs ``s`` (n, d_s), ``c`` (n, d_c); n may be 0. A collective under DDP.

        Scaled so that DDP's gradient average gives the gradient of the loss on the global batch:
        rank r returns ``world * (its rows' summed loss) / N_global``; the mean over ranks of the
        returned values is the global-batch loss.
        """
        if c.shape[0] != s.shape[0]:
            raise ValueError(f"s has {s.shape[0]} rows but c has {c.shape[0]}; pass aligned anchor pairs")
        q = self(s)  # (n, d_c)
        k = tf.normalize(c.to(q.dtype), dim=-1)  # (n, d_c)
        gather = self.config.gather_negatives and world_size() > 1
        world = world_size() if gather else 1
        if gather:
            Q, off, sizes = gather_rows(q, with_grad=True)  # (N, d_c)
            K, _, _ = gather_rows(k, with_grad=True)
            n_global = sum(sizes)
        else:
            Q, K, off, n_global = q, k, 0, q.shape[0]
        if n_global == 0:  # every rank empty: a zero loss still wired to every parameter
            zero = sum((p.sum() for p in self.parameters() if p.requires_grad), q.new_zeros(())) * 0.0
            return zero, {"infonce": zero.detach(), "mse": zero.detach(), "logit_scale": self.logit_scale().detach()}
        scale = self.logit_scale()
        target = torch.arange(q.shape[0], device=q.device) + off  # local row i pairs with global column off+i
        items = K
        if self.config.negative_queue and int(self.queue_filled):  # earlier anchors: negatives only
            items = torch.cat([K, self.queue[: int(self.queue_filled)].to(K.dtype)])
        ce = tf.cross_entropy(scale * q @ items.T, target, reduction="sum") + tf.cross_entropy(
            scale * k @ Q.T, target, reduction="sum"
        )  # rows: this rank's queries vs all items (+ the queue), and this rank's items vs all queries
        if self.config.negative_queue and self.training:
            self._enqueue(k.detach())
        infonce = world * ce / (2 * n_global)
        mse = world * ((q - k) ** 2).sum() / n_global
        total = infonce + self.config.mse_weight * mse if self.config.mse_weight > 0 else infonce
        parts = {"infonce": infonce.detach(), "mse": mse.detach(), "logit_scale": scale.detach()}
        if self.config.prior_weight > 0 and bool(self.has_prior):  # the same on every rank: DDP's mean keeps it
            pull = ((self.linear_part() - self.prior_map) ** 2).sum()
            total = total + self.config.prior_weight * pull
            parts["prior_pull"] = pull.detach()
        return total, parts

    @torch.no_grad()
    def _enqueue(self, k: torch.Tensor) -> None:
        """Push this batch's canonical vectors into the negative queue, the oldest overwritten first."""
        pos, filled = write_rows(self.queue, int(self.queue_pos), int(self.queue_filled), k)
        self.queue_pos.fill_(pos)
        self.queue_filled.fill_(filled)

    def make_optimizer(self) -> torch.optim.AdamW:
        """The bridge's optimizer, the same wherever it learns (train.py, evaluate.py, ``fit_step``):
        AdamW at ``config.lr``; group 0 = the map's weights (``config.weight_decay``), group 1 = the
        temperature when it is learned (no decay). A checkpoint's optimizer state loads into it."""
        decay = [p for n, p in self.named_parameters() if p.requires_grad and n != "log_scale"]
        groups = [{"params": decay, "weight_decay": self.config.weight_decay}]
        if self.log_scale.requires_grad:
            groups.append({"params": [self.log_scale], "weight_decay": 0.0})
        return torch.optim.AdamW(groups, lr=self.config.lr)

    def fit_step(self, s: torch.Tensor, c: torch.Tensor) -> float:
        """One optimizer step on the pairs (standalone use; LightningModules call ``loss``). Returns the loss."""
        if self._optimizer is None:
            self._optimizer = self.make_optimizer()
        self._optimizer.zero_grad(set_to_none=True)
        loss, _ = self.loss(s, c)
        loss.backward()
        self._optimizer.step()
        return float(loss.detach())

    # --- drift ----------------------------------------------------------------------------------
    @torch.no_grad()
    def set_reference(self) -> None:
        """Snapshot the current map as the reference (the bridge that produced stored vectors)."""
        for name, t in self._weights().items():
            getattr(self, "ref_" + name.replace(".", "_")).copy_(t)
        self.has_ref.fill_(1)

    def _bound(self, cur: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float | None:
        """Certified bound on sup_{||a|| <= 1} ||f_cur(a) - f_other(a)||; None when none exists."""
        if self.config.kind != "mlp":
            return _spec(cur["weight"] - other["weight"])
        if self.config.activation not in _CERTIFIED_ACTS:
            return None
        return mlp_drift_bound(cur, other)

    def _snapshot(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k: getattr(self, prefix + k.replace(".", "_")) for k in self._weights()}

    @torch.no_grad()
    def drift(self, against: str = "reference") -> DriftReport:
        """Bound on ``sup_{||a|| <= 1} ||f_t(a) - f_ref(a)||`` (``against='reference'``, inf before
        ``set_reference``) or the last interval's (``'interval'``, inf before ``mark_interval``)."""
        if against not in ("reference", "interval"):
            raise ValueError(f"against={against!r}: use 'reference' or 'interval'")
        method = "spectral_norm" if self.config.kind != "mlp" else "lipschitz_bound"
        if self.config.kind == "mlp" and self.config.activation not in _CERTIFIED_ACTS:
            return DriftReport(None, against, "none", certificate_applies=False)
        if against == "interval":
            return DriftReport(float(self.eps_interval), against, method, certificate_applies=True)
        value = self._bound(self._weights(), self._snapshot("ref_")) if bool(self.has_ref) else float("inf")
        return DriftReport(value, against, method, certificate_applies=True)

    @torch.no_grad()
    def mark_interval(self) -> float:
        """End a drift interval: ε = bound on the change since the last mark (since construction or
        the loaded state for the first), then start the next. Returns ε (inf without a certificate)."""
        cur = self._weights()
        bound = self._bound(cur, self._snapshot("prev_"))
        self.eps_interval.fill_(float("inf") if bound is None else bound)
        for name, t in cur.items():
            getattr(self, "prev_" + name.replace(".", "_")).copy_(t)
        self.refreshes += 1
        return float(self.eps_interval)

    # --- the Safe@k interface (luma_pl.telemetry.safe_at_k) -------------------------------------
    def epsilon(self) -> float:
        """Drift over the last interval (inf before the first, or when no certificate applies)."""
        return float(self.eps_interval)

    def drift_from_reference(self) -> float:
        rep = self.drift("reference")
        return float("inf") if rep.value is None else float(rep.value)

    @property
    def affine(self) -> bool:
        """The MLP has biases: its drift bound is D = ε max(||a||, 1), not ε ||a||."""
        return self.config.kind == "mlp"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # checkpoints written before the interval drift existed lack its buffers: start a fresh
        # interval from the loaded weights (no refresh yet, ε unknown). Where the loaded weight is not
        # stored as such (the orthogonal parametrisation), prev stays the constructed one: the first
        # interval's ε is then larger than the true change, never smaller.
        # a checkpoint is untrusted data: refuse NaN/inf weights, shapes other than the config's and
        # out-of-range counters before any of it is copied in (ε may be +inf: no measurement yet)
        check_state(self, state_dict, prefix, {
            "refreshes": dict(min_value=0), "has_ref": dict(min_value=0, max_value=1),
            "eps_interval": dict(min_value=0.0, allow_inf=True),
        })
        if any(k.startswith(prefix) for k in state_dict) and prefix + "refreshes" not in state_dict:
            state_dict[prefix + "refreshes"] = torch.zeros((), dtype=torch.int64)
            state_dict[prefix + "eps_interval"] = torch.tensor(float("inf"), dtype=torch.float64)
            for name in self._weights():
                src = state_dict.get(prefix + "net." + name)
                prev = getattr(self, "prev_" + name.replace(".", "_"))
                state_dict[prefix + "prev_" + name.replace(".", "_")] = (src if src is not None else prev).clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def get_extra_state(self) -> dict:
        return {"config": self.config.to_dict()}

    def set_extra_state(self, state: dict) -> None:
        cfg = LearnedBridgeConfig.from_dict(state["config"])
        mine = (self.config.kind, self.config.d_s, self.config.d_c, self.config.hidden)
        theirs = (cfg.kind, cfg.d_s, cfg.d_c, cfg.hidden)
        if mine != theirs:
            raise ValueError(f"checkpoint bridge (kind, d_s, d_c, hidden)={theirs} but this bridge has {mine}; build it with the checkpoint's config")
        self.config = cfg
