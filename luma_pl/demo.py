"""The embedded-default demo: ``make demo`` / ``python -m luma_pl.demo``.

End to end on real data with no download, through the same entry points a user runs:
1. build (or reuse) the demo corpus: docstrings of installed packages embedded by the packaged
   WordLlama (source space, plays CLAP) and MiniLM (canonical space, plays CLIP) encoders, written
   as WebDataset block shards;
2. ``train.py fit --config configs/default.yaml``: replay the shards as a stream, fit the streaming
   Procrustes bridge, admit items into the tiered memory (heavy hitters), migrate tiers, log Safe@k
   telemetry to offline W&B + CSV, checkpoint atomically;
3. ``evaluate.py --config configs/eval_default.yaml`` twice: the trained bridge frozen (ε = 0, the
   certificate covers compression only) and a bridge that keeps learning on the stream (ε = drift
   over the last refresh interval);
4. print a results table and where the report, plots and offline W&B runs are.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from luma_pl.threads import limit_cpu_threads

REPO = Path(__file__).resolve().parents[1]


def build_shards(out: Path, packages: list[str], max_items: int | None) -> dict:
    """Demo corpus -> block shards in ``out`` (the embedded corpus is cached on disk)."""
    from data_modules.build_shards import build_demo

    args = argparse.Namespace(packages=packages, max_items=max_items, cache_dir=None, device="cpu",
                              out=str(out), name="demo", block_events=1024, events_per_shard=1024)
    return build_demo(args)


def _loggers(folder: Path) -> str:
    """``--trainer.logger`` value: CSV + offline W&B, both writing under ``folder``."""
    return json.dumps([
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(folder), "name": "csv"}},
        {"class_path": "lightning.pytorch.loggers.WandbLogger",
         "init_args": {"save_dir": str(folder), "project": "luma-pl", "offline": True}}])


def _finish_wandb() -> None:
    """Close the stage's W&B run: in one process a new WandbLogger would otherwise reuse it."""
    import wandb

    if wandb.run is not None:
        wandb.finish()


def _fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m luma_pl.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="artifacts/demo", help="output folder (shards, runs, reports)")
    p.add_argument("--packages", nargs="+", default=["numpy", "scipy"], help="packages whose docstrings make the corpus")
    p.add_argument("--max-items", type=int, default=None, help="cap on corpus items (default: all)")
    args = p.parse_args(argv)
    limit_cpu_threads()
    from evaluate import run_evaluation
    from train import cli_main

    out = Path(args.out).resolve()
    earlier_runs = set(out.rglob("offline-run-*"))  # a re-run reuses the folder: list only this run's
    t0 = time.perf_counter()
    print(f"[1/4] demo corpus -> shards in {out / 'shards'} (the first build embeds every text; cached after)", flush=True)
    report = build_shards(out / "shards", args.packages, args.max_items)
    t_corpus = time.perf_counter() - t0

    print("[2/4] train.py fit: streaming Procrustes WordLlama -> MiniLM with admission, migration, Safe@k", flush=True)
    train_dir = out / "train"
    t1 = time.perf_counter()
    cli = cli_main(["fit", "--config", str(REPO / "configs" / "default.yaml"), "--data.root", str(out / "shards"),
                    "--trainer.default_root_dir", str(train_dir), "--trainer.logger", _loggers(train_dir),
                    "--trainer.callbacks.dirpath", str(train_dir / "checkpoints")])
    t_train = time.perf_counter() - t1
    _finish_wandb()
    ckpt = train_dir / "checkpoints" / "last.ckpt"
    val = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith(("val/", "safe/", "replay/"))}
    bridge = cli.model.bridge

    runs = {}
    for step, (name, extra) in enumerate((
            ("frozen trained bridge, eps=0", ["--model.eval.bridge_checkpoint", str(ckpt),
                                              "--model.eval.fit_bridge", "false", "--model.eval.epsilon_source", "frozen"]),
            ("bridge learning on the stream", ["--model.eval.fit_bridge", "true",
                                               "--model.eval.epsilon_source", "interval"])), start=3):
        tag = "frozen" if step == 3 else "streaming"
        print(f"[{step}/4] evaluate.py: streaming replay, {name}", flush=True)
        summary, _ = run_evaluation(["--config", str(REPO / "configs" / "eval_default.yaml"),
                                     "--data.root", str(out / "shards"),
                                     "--model.eval.report_dir", str(out / f"eval_{tag}"),
                                     "--trainer.default_root_dir", str(out / f"eval_{tag}"),
                                     "--trainer.logger", _loggers(out / f"eval_{tag}"), *extra])
        runs[name] = summary
        _finish_wandb()

    total = time.perf_counter() - t0
    results = {"corpus": {k: report.get(k) for k in ("items", "queries", "topics", "build_s", "cache_hit")},
               "train": {"pairs": int(bridge.pairs_total), "refreshes": int(bridge.refreshes),
                         "epsilon_last_interval": float(bridge.epsilon()), "metrics": val, "seconds": round(t_train, 1)},
               "evaluate": runs, "seconds": {"corpus": round(t_corpus, 1), "total": round(total, 1)}}
    (out / "demo_report.json").write_text(json.dumps(results, indent=1, default=str))

    print("\n=== luma-pl demo: WordLlama (source, plays CLAP) -> MiniLM (canonical, plays CLIP) ===")
    c = results["corpus"]
    print(f"corpus: {c['items']} items, {c['queries']} queries, {c['topics']} topics "
          f"(docstrings of {', '.join(args.packages)})")
    print(f"train:  {results['train']['pairs']} anchor pairs, {results['train']['refreshes']} refreshes, "
          f"eps over the last interval {results['train']['epsilon_last_interval']:.3f}; validation over all "
          f"items: Recall@10 {_fmt(val.get('val/recall@10'))}, MRR@10 {_fmt(val.get('val/mrr@10'))}")
    k = 10
    head = f"{'streaming replay':<32} {'R@10':>6} {'MRR@10':>7} {'nDCG@10':>8} {'Safe@1':>7} {'Safe@10':>8} " \
           f"{'eps':>6} {'zeta_max':>8} {'p50 ms':>7} {'p99 ms':>7} {'ingest/s':>9}"
    print(head)
    for name, s in runs.items():
        print(f"{name:<32} {_fmt(s.get(f'recall@{k}')):>6} {_fmt(s.get(f'mrr@{k}')):>7} {_fmt(s.get(f'ndcg@{k}')):>8} "
              f"{_fmt(s.get('safe@1')):>7} {_fmt(s.get(f'safe@{k}')):>8} {_fmt(s.get('epsilon_last')):>6} "
              f"{_fmt(s.get('zeta_max_last')):>8} {_fmt(s.get('latency_p50_ms')):>7} {_fmt(s.get('latency_p99_ms')):>7} "
              f"{_fmt(s.get('ingest_per_s'), '.0f'):>9}")
    print(f"\nreport: {out / 'demo_report.json'}")
    print(f"plots and replay reports: {out / 'eval_frozen'}, {out / 'eval_streaming'}")
    runs_now = sorted(str(p) for p in set(out.rglob("offline-run-*")) - earlier_runs)
    print(f"offline W&B runs of this demo (sync later with `wandb sync <dir>`): {runs_now}")
    print(f"checkpoint: {ckpt}")
    print(f"time: corpus {t_corpus:.1f} s, train {t_train:.1f} s, total {total:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
