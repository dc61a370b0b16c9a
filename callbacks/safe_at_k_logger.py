"""SafeAtKLogger: Safe@k telemetry of a bridge module, logged to every Lightning logger.

What it watches: ``pl_module.bridge`` (any bridge with the Safe@k interface) and the stream
runtime's memory — the module's (``pl_module.runtime()``: a bridge module in ``train.py fit``, the
``StreamEvaluator`` in ``evaluate.py``), or, when the module has none, a runtime of this callback's
own that it fills with the canonical item vectors of the training batches (``item_space``; ids are
the events' ids, ``batch["id"]``; one memory per rank). Answers are certified through the
runtime's ``query`` (the one certify sequence). The probe set is the first ``num_probes`` source
queries (``query_space``) seen.

When it logs (``safe/`` at training and test steps, ``val_safe/`` at validation epoch end):
- at every bridge refresh: the online audit (``telemetry.OnlineAudit``) and the certificate of the
  probe set with the new bridge; also every ``log_every_n_steps`` steps once the bridge is ready;
- rates Safe@1, Safe@k and the crude rule's (``SafeAtK``: sum states, reduced over ranks), ε (the
  bridge-level value and its source code, index into ``EPSILON_SOURCES``), mean ε_q, ζ_max, mean ζ_1,
  median margins, violations (cumulative, summed over ranks), flip rate, probe recall@k;
- to a ``WandbLogger`` additionally margin/slack histograms (``wandb.Histogram``) and a table of
  sample probes with their hits (``wandb.Table``). W&B stays offline unless the logger says otherwise.

State (``state_dict``): the probe set, the audit snapshot and counters: tensors and primitives.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from luma_pl.ranks import rank
from luma_pl.stream.bridge import StreamBridge
from luma_pl.stream.ids import batch_ids
from luma_pl.stream.runtime import StreamRuntime
from luma_pl.telemetry import functional as TF
from luma_pl.telemetry.audit import OnlineAudit, calibrated_rates
from luma_pl.telemetry.probes import probe_recall
from luma_pl.telemetry.safe_at_k import SafeAtK

_DEFAULT_MEMORY = {"hot_max_items": 1000, "warm_max_items": 200_000, "pq_m": 48, "pq_nbits": 8, "nprobe": 16}


class SafeAtKLogger(Callback):
    def __init__(self, k: int = 10, candidates: int = 20, epsilon_source: str = "interval",
                 epsilon_value: float | None = None, rescore: bool = False, num_probes: int = 128,
                 recall_probes: int = 64, table_rows: int = 8, log_every_n_steps: int = 0,
                 query_space: str = "query_wordllama", item_space: str = "minilm", memory_attr: str = "memory",
                 memory: dict | None = None, histograms: bool = True, calibrated_alpha: float = 0.05,
                 calibration_window: int = 16384) -> None:
        super().__init__()
        if candidates < k + 1:
            raise ValueError(f"candidates={candidates} must be >= k + 1 = {k + 1}: Safe@k needs the (k+1)-th score")
        if epsilon_source not in TF.EPSILON_SOURCES:
            raise ValueError(f"epsilon_source={epsilon_source!r}: use one of {TF.EPSILON_SOURCES}")
        self.k, self.candidates = int(k), int(candidates)
        self.epsilon_source, self.epsilon_value = epsilon_source, epsilon_value
        self.rescore = bool(rescore)
        self.num_probes, self.recall_probes, self.table_rows = int(num_probes), int(recall_probes), int(table_rows)
        self.log_every_n_steps = int(log_every_n_steps)
        self.query_space, self.item_space, self.memory_attr = query_space, item_space, memory_attr
        self.memory_config = dict(_DEFAULT_MEMORY, **(memory or {}))
        self.histograms = histograms
        self.calibrated_alpha, self.calibration_window = float(calibrated_alpha), int(calibration_window)
        self._runtime = None  # this callback's own runtime, when the module has no memory
        self._probes: list[torch.Tensor] = []
        self._sharded = False  # set from the memory found on the module
        self._audit: OnlineAudit | None = None
        self._seen_refreshes = 0
        self.last_metrics: dict[str, float] = {}
        self.last_certificate: TF.Certificate | None = None
        self._audit_state: dict | None = None

    def configure(self, config) -> None:
        """The top-level ``safe_at_k`` group (``luma_pl.telemetry.safe_at_k.CertificateConfig``):
        k, ε source / value and rescoring, before the run starts; candidates grow to k + 1 if needed."""
        if self._probes:
            raise RuntimeError("SafeAtKLogger.configure: probes were already collected; configure it before the run")
        self.k = int(config.k)
        self.candidates = max(self.candidates, self.k + 1)
        self.epsilon_source, self.epsilon_value = config.epsilon_source, config.epsilon_value
        self.rescore = bool(config.rescore)
        self.calibrated_alpha, self.calibration_window = float(config.calibrated_alpha), int(config.calibration_window)

    # ------------------------------------------------------------------ data
    def runtime_of(self, pl_module):
        """The stream runtime whose answers are certified: the module's (``pl_module.runtime()``), or
        this callback's own over the training batches' items when the module has no memory."""
        runtime = pl_module.runtime() if callable(getattr(pl_module, "runtime", None)) else None
        if runtime is None:
            mem = getattr(pl_module, self.memory_attr, None)
            if mem is not None:  # a module that holds a bare memory
                if self._runtime is None or self._runtime.memory is not mem:
                    self._runtime = StreamRuntime(mem, StreamBridge(pl_module.bridge, learn=False, freeze=False),
                                                  replicated=True)
            return self._runtime
        return runtime

    def memory_of(self, pl_module):
        runtime = self.runtime_of(pl_module)
        return None if runtime is None else runtime.memory

    def _ingest(self, pl_module, batch: dict) -> None:
        emb, has = batch.get("emb", {}), batch.get("has", {})
        owned = self.runtime_of(pl_module)
        if (owned is None or owned is self._runtime) and self.item_space in emb:
            keep = has[self.item_space].cpu().numpy().astype(bool)
            x = emb[self.item_space].detach().float().cpu().numpy()[keep]
            if len(x):
                if self._runtime is None:
                    from luma_pl.memory import MemoryConfig, TieredMemory

                    memory = TieredMemory(MemoryConfig(dim=x.shape[1], **self.memory_config))
                    # one memory per rank, each of its own rows (no collective): replicated=True
                    self._runtime = StreamRuntime(memory, StreamBridge(pl_module.bridge, learn=False, freeze=False),
                                                  replicated=True)
                # the one id per event; a repeated event is skipped by the runtime's replay rule
                self._runtime.ingest(batch_ids(batch)[keep], x / np.linalg.norm(x, axis=1, keepdims=True))
        have = sum(len(p) for p in self._probes)
        if have < self.num_probes and self.query_space in emb:
            a = emb[self.query_space][has[self.query_space]].detach().float().cpu()
            self._probes.append(a[: self.num_probes - have])

    @property
    def probes(self) -> torch.Tensor | None:
        return torch.cat(self._probes) if self._probes else None

    def _ensure_audit(self) -> OnlineAudit:
        if self._audit is None:
            self._audit = OnlineAudit(self.probes, self.k, self.candidates, self.epsilon_source, self.epsilon_value,
                                      self.rescore, distances="cap" if self._sharded else "vectors",
                                      alpha=self.calibrated_alpha, calibration_window=self.calibration_window)
            if self._audit_state is not None:
                self._audit.load_state_dict(self._audit_state)
        return self._audit

    # ------------------------------------------------------------------ hooks
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx: int = 0) -> None:
        """evaluate.py: the same telemetry over the replay (the evaluator's runtime ingests)."""
        self.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._ingest(pl_module, batch)
        bridge = getattr(pl_module, "bridge", None)
        if bridge is None or int(bridge.refreshes) == 0:
            return
        refreshed = int(bridge.refreshes) != self._seen_refreshes
        due = self.log_every_n_steps > 0 and trainer.global_step % self.log_every_n_steps == 0
        memory = self.memory_of(pl_module)
        self._sharded = memory is not None and memory.distributed
        if not (refreshed or due) or self.probes is None or memory is None or not len(memory):
            return
        extra = {}
        if refreshed:
            self._seen_refreshes = int(bridge.refreshes)
            report = self._ensure_audit().observe(bridge, memory, search=self.runtime_of(pl_module).search)
            if report is not None:
                extra = {k: v for k, v in report.as_metrics("safe/audit_").items()
                         if k in ("safe/audit_violations", "safe/audit_violations_within_epsilon",
                                  "safe/audit_flips_uncertified", "safe/audit_uncertified",
                                  "safe/audit_certified", "safe/audit_realised_q_max",
                                  "safe/audit_epsilon_used_q_max", "safe/audit_epsilon_held")}
        self.log_telemetry(trainer, pl_module, "safe/", extra)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        bridge = getattr(pl_module, "bridge", None)
        memory = self.memory_of(pl_module)
        if trainer.sanity_checking or bridge is None or int(bridge.refreshes) == 0 or memory is None \
                or self.probes is None or not len(memory):
            return
        self.log_telemetry(trainer, pl_module, "val_safe/", {})

    # ------------------------------------------------------------------ telemetry
    @torch.no_grad()
    def compute(self, pl_module) -> tuple[dict[str, float], TF.Certificate, object, object]:
        """Certificate of the probe set with the current bridge; returns (metrics, cert, result, choice)."""
        runtime = self.runtime_of(pl_module)
        memory = runtime.memory
        ans = runtime.query(self.probes, self.k, candidates=self.candidates, rescore=self.rescore, record_hits=False,
                            epsilon_source=self.epsilon_source, epsilon_value=self.epsilon_value)
        q, res, cert, choice = ans.queries, ans.result, ans.certificate, ans.epsilon
        sharded = memory.distributed  # this rank lacks the other shards' vectors
        metric = SafeAtK(self.k)
        metric.update(cert)
        rates = metric.compute()  # synced over ranks when a process group exists
        # exact recall probes need every live item in one place: not done on a sharded memory (nan)
        probe = None if sharded else probe_recall(memory.shard, q[: self.recall_probes].numpy(), self.k,
                                                  res.ids[: self.recall_probes, : self.k])
        audit = self._audit.totals if self._audit is not None else {}
        m = {
            "safe_at_1": float(rates["safe_at_1"]), "safe_at_k": float(rates["safe_at_k"]),
            "crude_safe_at_1": float(rates["crude_safe_at_1"]), "crude_safe_at_k": float(rates["crude_safe_at_k"]),
            "epsilon_source": float(TF.EPSILON_SOURCES.index(choice.source)),
            "zeta_max": float(res.zeta_max), "zeta_1_mean": float(rates["zeta_1_mean"]),
            "margin_top2_median": float(np.nanmedian(cert.margin_top2.numpy())),
            "margin_at_k_median": float(np.nanmedian(cert.margin_at_k.numpy())),
            "probe_recall": probe.recall if probe is not None else float("nan"), "probes": float(rates["count"]),
            "violations": float(audit.get("violations", 0)),
            "flip_rate": (audit["flips_uncertified"] / audit["uncertified"]) if audit.get("uncertified") else float("nan"),
        }
        m.update(radius_quantiles(cert))
        m.update(self._calibrated(cert))
        if math.isfinite(choice.value):
            m["epsilon"] = choice.value
            m["epsilon_q_mean"] = float(rates["epsilon_mean"])
        return m, cert, res, choice

    def _calibrated(self, cert: TF.Certificate) -> dict[str, float]:
        """The calibrated mode, labelled apart: the probes' answers certified at the calibrated ε
        (``eps < radius``, the same certificate) and the audit's realised rates with intervals."""
        if self._audit is None:
            return {}
        eps = self._audit.calibration.epsilon()
        out = {"calibrated_epsilon": eps if math.isfinite(eps) else float("nan"),
               "calibrated_safe_at_1": float((cert.radius_at_1 > eps).double().mean()),
               "calibrated_safe_at_k": float((cert.radius_at_k > eps).double().mean())}
        rates = calibrated_rates(self._audit.totals, self.calibrated_alpha)
        out.update({k: v for k, v in rates.items() if k != "alpha"})
        return out

    def report_section(self) -> tuple[str, str, dict[str, float]] | None:
        """For evaluate.py's report (``StreamEvaluator.on_test_end`` asks every callback that has
        this): ``("probe_audit", "audit_", figures)``, the last telemetry of the probe set (worst-case
        Safe@1/k, violations, flip rates, the calibrated mode), NaN left out; None before any."""
        if not self.last_metrics:
            return None
        return "probe_audit", "audit_", {key.split("/", 1)[1]: float(v) for key, v in self.last_metrics.items()
                                         if isinstance(v, (int, float)) and v == v}

    def _reduce_sum(self, trainer, value: float) -> float:
        if trainer.world_size > 1:
            return float(trainer.strategy.reduce(torch.tensor(value, dtype=torch.float64), reduce_op="sum"))
        return value

    def log_telemetry(self, trainer, pl_module, prefix: str, extra: dict) -> dict[str, float]:
        m, cert, res, choice = self.compute(pl_module)
        m["violations"] = self._reduce_sum(trainer, m["violations"])
        metrics = {prefix + k: v for k, v in m.items() if not (isinstance(v, float) and math.isnan(v))}
        metrics.update({k: self._reduce_sum(trainer, v) for k, v in extra.items()})
        self.last_metrics, self.last_certificate = metrics, cert
        step = trainer.global_step
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)
            self._log_wandb_extras(lg, prefix, cert, res, choice, step)
        return metrics

    def _log_wandb_extras(self, lg, prefix, cert, res, choice, step) -> None:
        from lightning.pytorch.loggers import WandbLogger

        if not isinstance(lg, WandbLogger) or rank() != 0:
            return
        import wandb

        payload = {"trainer/global_step": step}
        if self.histograms:
            for name in ("margin_top2", "margin_at_k", "slack_at_1", "slack_at_k"):
                v = getattr(cert, name).numpy()
                v = v[np.isfinite(v)]
                if len(v):
                    payload[f"{prefix}{name}_hist"] = wandb.Histogram(v)
            for name in ("radius_at_1", "radius_at_k"):  # log10: radii span decades; 0 = uncertifiable
                v = getattr(cert, name).numpy()
                v = v[np.isfinite(v) & (v > 0)]
                if len(v):
                    payload[f"{prefix}log10_{name}_hist"] = wandb.Histogram(np.log10(v))
        cols = ["probe", "hits", "scores", "tiers", "zeta_1", "margin_top2", "epsilon_q", "epsilon_source",
                "radius_at_1", "radius_at_k", "safe_at_1", "safe_at_k"]
        rows = []
        for i in range(min(self.table_rows, len(res.ids))):
            rows.append([i, " ".join(str(int(x)) for x in res.ids[i, : self.k]),
                         " ".join(f"{float(x):.4f}" for x in res.scores[i, : self.k]),
                         " ".join(str(int(x)) for x in res.tiers[i, : self.k]), float(cert.zeta_1[i]),
                         float(cert.margin_top2[i]), float(cert.epsilon[i]), choice.source,
                         float(cert.radius_at_1[i]), float(cert.radius_at_k[i]),
                         bool(cert.safe_at_1[i]), bool(cert.safe_at_k[i])])
        payload[f"{prefix}samples"] = wandb.Table(columns=cols, data=rows)
        lg.experiment.log(payload)

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:
        return {"probes": self.probes, "seen_refreshes": self._seen_refreshes,
                "audit": self._audit.state_dict() if self._audit is not None else None}

    def load_state_dict(self, state_dict: dict) -> None:
        probes = state_dict.get("probes")
        self._probes = [probes] if probes is not None else []
        self._seen_refreshes = int(state_dict.get("seen_refreshes", 0))
        self._audit_state = state_dict.get("audit")
        self._audit = None


def radius_quantiles(cert: TF.Certificate) -> dict[str, float]:
    """p10 / p50 / p90 of the probes' certified radii over the finite ones, the share that is 0 (not
    certified at any drift) and the share that is +inf (nothing to check: certified at any drift)."""
    out = {}
    for name in ("radius_at_1", "radius_at_k"):
        v = getattr(cert, name).numpy()
        fin = v[np.isfinite(v)]
        for p in (10, 50, 90):
            out[f"{name}_p{p}"] = float(np.quantile(fin, p / 100)) if len(fin) else float("nan")
        out[f"{name}_zero_share"] = float((v == 0).mean()) if len(v) else float("nan")
        out[f"{name}_inf_share"] = float(np.isinf(v).mean()) if len(v) else float("nan")
    return out
