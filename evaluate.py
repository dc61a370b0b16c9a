"""Streaming replay evaluation: ``python evaluate.py --config configs/eval_default.yaml``.

Replays a shard stream of interleaved ingest and query events through the memory and the bridge
(``luma_pl.evaluation.StreamEvaluator``) with a Lightning ``Trainer.test`` loop, so devices,
DDP (``--trainer.strategy ddp --trainer.devices 2``, sharded memory) and loggers (W&B offline,
CSV) are configured exactly as for training. Start from a train.py checkpoint with
``--model.eval.bridge_checkpoint <ckpt>`` or from scratch. Writes ``report.json`` and PNG plots to
``--model.eval.report_dir`` and logs them to W&B when a ``WandbLogger`` is configured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from data_modules.stream_replay import StreamReplayDataModule
from luma_pl.evaluation.stream_eval import StreamEvaluator
from luma_pl.threads import limit_cpu_threads
from train import add_stream_groups, apply_callback_groups, name_wandb_runs


class EvalCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"data.replicate": True})
        add_stream_groups(parser)

    def parse_arguments(self, parser, args) -> None:
        self.argv = list(sys.argv[1:] if args is None else args)  # the run's own settings name its W&B run
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        limit_cpu_threads()
        name_wandb_runs(self.config, "evaluate", self.argv)
        # the top-level admission group (shared with train.py) configures the evaluator's admission
        if self.config.get("admission") is not None:
            self.config.model.admission = self.config.admission
        if self.config.get("memory") is not None:  # the top-level memory group (shared with train.py)
            self.config.model.memory = self.config.memory
        cert = self.config.get("safe_at_k")
        if cert is not None:  # the evaluator certifies its own queries with the same settings
            if self.config.model.get("eval") is None:
                self.config.model.eval = {}
            for key in ("k", "epsilon_source", "epsilon_value", "rescore"):
                self.config.model.eval[key] = cert[key]

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # a migration group needs its TierMigration callback; safe_at_k also configures a
        # SafeAtKLogger when one is given (the evaluator itself read it above)
        apply_callback_groups(self.config, self.trainer.callbacks, required=("migration",))


def run_evaluation(args: list[str] | None = None) -> tuple[dict, EvalCLI]:
    """Runs the replay; rank 0 writes the report (``StreamEvaluator.on_test_end``) and prints it."""
    from callbacks.wandb_config import WandbConfigCallback

    cli = EvalCLI(StreamEvaluator, StreamReplayDataModule, run=False, args=args,
                  save_config_callback=WandbConfigCallback,
                  save_config_kwargs={"config_filename": "luma_eval_config.yaml", "overwrite": True})
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    report_dir = cli.model.cfg.report_dir
    summary = getattr(cli.model, "summary", None)
    if summary is None and report_dir and (Path(report_dir) / "report.json").exists():  # spawned workers wrote it
        summary = json.loads((Path(report_dir) / "report.json").read_text())["summary"]
    if cli.trainer.is_global_zero and summary:
        _print(summary, Path(report_dir) if report_dir else None)
    return summary or {}, cli


def _fmt(v) -> str:
    return "n/a" if not isinstance(v, (int, float)) or v != v else f"{v:.3g}"


def _print(summary: dict, report_dir: Path) -> None:
    k = summary.get("k", 10)
    rows = [(f"Recall@{k}", summary.get(f"recall@{k}")), (f"MRR@{k}", summary.get(f"mrr@{k}")),
            (f"nDCG@{k}", summary.get(f"ndcg@{k}")), ("HitRate@k earlier events", summary.get("old_hit_rate")),
            ("Safe@1 rate", summary.get("safe@1")), (f"Safe@{k} rate", summary.get(f"safe@{k}")),
            ("crude Safe@1 rate", summary.get("crude_safe@1")),
            ("certified radius@1 p10 / p50 / p90", " / ".join(_fmt(summary.get(f"radius@1_p{p}")) for p in (10, 50, 90))),
            (f"certified radius@{k} p10 / p50 / p90",
             " / ".join(_fmt(summary.get(f"radius@{k}_p{p}")) for p in (10, 50, 90))),
            ("radius@1 = 0 (not certifiable at epsilon 0)", summary.get("radius@1_zero_share")),
            (f"epsilon ({summary.get('epsilon_source')})", summary.get("epsilon_last")),
            ("zeta_max", summary.get("zeta_max_last")), ("latency p50 ms/query", summary.get("latency_p50_ms")),
            ("latency p99 ms/query", summary.get("latency_p99_ms")), ("ingest events/s", summary.get("ingest_per_s")),
            ("hot / warm / evicted items", f"{summary.get('hot_items')} / {summary.get('warm_items')} / "
                                           f"{summary.get('evicted')}")]
    if "audit_safe_at_1" in summary:  # a SafeAtKLogger's probe set, re-asked at every refresh
        a = lambda key: summary.get(f"audit_{key}")  # noqa: E731
        rows += [("probes: worst-case Safe@1 / Safe@k", f"{_fmt(a('safe_at_1'))} / {_fmt(a('safe_at_k'))}"),
                 ("probes: violations (certified, then flipped)", a("violations")),
                 ("probes: flip rate of uncertified answers", a("flip_rate")),
                 ("calibrated (labelled apart): epsilon at alpha", a("calibrated_epsilon")),
                 ("calibrated Safe@1 / Safe@k", f"{_fmt(a('calibrated_safe_at_1'))} / {_fmt(a('calibrated_safe_at_k'))}"),
                 ("calibrated: realised flip rate @1 [95% CI]",
                  f"{_fmt(a('calibrated_flip_rate_at_1'))} [{_fmt(a('calibrated_flip_rate_at_1_lo'))}, "
                  f"{_fmt(a('calibrated_flip_rate_at_1_hi'))}]"),
                 ("calibrated: drift above its epsilon (<= alpha if exchangeable)",
                  f"{_fmt(a('calibrated_exceed_share'))} [{_fmt(a('calibrated_exceed_share_lo'))}, "
                  f"{_fmt(a('calibrated_exceed_share_hi'))}]")]
    csls = summary.get(f"csls_recall@{k}")
    if isinstance(csls, float) and csls == csls:  # a number, not NaN: the run used hubness csls
        rows += [(f"CSLS Recall@{k} (re-ranked; Safe@k does not apply)", summary.get(f"csls_recall@{k}")),
                 (f"CSLS MRR@{k}", summary.get(f"csls_mrr@{k}"))]
    if summary.get("labelled_queries"):
        rows += [(f"labelled Recall@{k}", summary.get(f"labelled_recall@{k}")),
                 (f"labelled nDCG@{k}", summary.get(f"labelled_ndcg@{k}")),
                 ("labelled Safe@1 rate", summary.get("labelled_safe@1")),
                 ("labelled asked / scored", f"{summary.get('labelled_queries')} / {summary.get('labelled_scored')}"),
                 ("labelled unanswered", summary.get("labelled_unanswered"))]
    print(f"\nstreaming replay evaluation: {summary.get('events')} events, {summary.get('queries')} queries")
    for name, v in rows:
        print(f"  {name:<28} {v:.4f}" if isinstance(v, float) else f"  {name:<28} {v}")
    print(f"  report and plots: {report_dir}")


if __name__ == "__main__":
    run_evaluation()  # LightningCLI reads sys.argv itself (passing it as args too warns "args passed twice")
