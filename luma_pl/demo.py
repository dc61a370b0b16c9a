"""The embedded-default demo: ``make demo`` / ``python -m luma_pl.demo``.

End to end on real data with no download:
1. build (or reuse) the demo corpus: docstrings of installed packages embedded by the packaged
   WordLlama (source space, plays CLAP) and MiniLM (canonical space, plays CLIP) encoders, written
   as WebDataset block shards;
2. replay the shards as a stream through a real Lightning ``Trainer`` fitting the streaming
   Procrustes bridge on the anchor pairs (WordLlama item text, MiniLM item text);
3. validate: source-space queries (qualified name + signature, WordLlama) bridged into MiniLM space
   and searched against every item, next to native MiniLM queries as the ceiling;
4. print a results table and where the shards, logs and report are.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from luma_pl.threads import limit_cpu_threads


def _native_metrics(corpus, ks=(1, 10)) -> dict[str, float]:
    """Retrieval with native canonical queries: query_minilm vs all minilm items (the ceiling)."""
    from luma_pl.corpus import event_arrays
    from luma_pl.metrics import functional as F

    ev = event_arrays(corpus)
    q = torch.from_numpy(ev["emb"]["query_minilm"])  # (n, 384), one query per event
    x = torch.from_numpy(ev["emb"]["minilm"])  # (n, 384), the event's item
    out = {}
    for i in range(0, q.shape[0], 1024):
        s = q[i : i + 1024] @ x.T  # (chunk, n)
        rel = torch.zeros_like(s, dtype=torch.bool)
        rel[torch.arange(s.shape[0]), i + torch.arange(s.shape[0])] = True
        for k in ks:
            for name in ("recall", "mrr", "ndcg", "hit_rate"):
                v = F.per_query(name, s, rel, k)[0].sum().item()  # (values, counted)
                out[f"{name}@{k}"] = out.get(f"{name}@{k}", 0.0) + v
    return {key: v / q.shape[0] for key, v in out.items()}


def build_shards(out: Path, packages: list[str], max_items: int | None) -> dict:
    """Demo corpus -> block shards in ``out`` (reused when the corpus report matches)."""
    from data_modules.build_shards import build_demo

    args = argparse.Namespace(packages=packages, max_items=max_items, cache_dir=None, device="cpu",
                              out=str(out), name="demo", block_events=1024, events_per_shard=1024)
    return build_demo(args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m luma_pl.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="artifacts/demo", help="output folder (shards, logs, report)")
    p.add_argument("--packages", nargs="+", default=["numpy", "scipy"], help="packages whose docstrings make the corpus")
    p.add_argument("--max-items", type=int, default=None, help="cap on corpus items (default: all)")
    p.add_argument("--batch-size", type=int, default=256, help="events per replay batch")
    p.add_argument("--refresh-every", type=int, default=500, help="bridge refresh period R in anchor pairs")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per rank")
    args = p.parse_args(argv)
    limit_cpu_threads()
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from callbacks.replay_stats import ReplayStatsLogger
    from data_modules.stream_replay import StreamReplayDataModule
    from luma_pl.corpus import DemoCorpusConfig, DocstringCorpusConfig, build_demo_corpus
    from luma_pl.modules.bridge_module import ProcrustesBridgeModule

    out = Path(args.out)
    t0 = time.perf_counter()
    print(f"[1/3] demo corpus and shards -> {out / 'shards'} (first build embeds every text; cached after)")
    report = build_shards(out / "shards", args.packages, args.max_items)
    t_corpus = time.perf_counter() - t0

    print("[2/3] replaying the stream through Lightning: streaming Procrustes WordLlama -> MiniLM")
    dm = StreamReplayDataModule(root=str(out / "shards"), batch_size=args.batch_size, num_workers=args.num_workers)
    module = ProcrustesBridgeModule(bridge={"d_s": 256, "d_c": 384, "refresh_every": args.refresh_every})
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=CSVLogger(str(out), name="logs"),
                         callbacks=[ReplayStatsLogger(every_n_batches=5)], log_every_n_steps=5,
                         enable_checkpointing=False, num_sanity_val_steps=0, enable_model_summary=False)
    t1 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    t_fit = time.perf_counter() - t1
    # the bridge may not have refreshed on the last partial interval: solve once more on all pairs
    module.bridge.refresh()
    print("[3/3] validation: bridged queries vs all items")
    val = trainer.validate(module, datamodule=dm, verbose=False)[0]

    corpus = build_demo_corpus(DemoCorpusConfig(corpus=DocstringCorpusConfig(packages=tuple(args.packages),
                                                                             max_items=args.max_items)))
    native = _native_metrics(corpus)
    rows = [("native MiniLM queries (ceiling)", native),
            ("WordLlama queries, streaming Procrustes", {k[4:]: float(v) for k, v in val.items() if k.startswith("val/")})]
    results = {"corpus": {k: report[k] for k in ("items", "queries", "topics") if k in report},
               "corpus_build_s": round(t_corpus, 1), "fit_s": round(t_fit, 1),
               "events_seen": dm.events_seen, "skipped": dm.skipped_total,
               "bridge": {"pairs": int(module.bridge.pairs_total), "refreshes": int(module.bridge.refreshes),
                          "epsilon_last_interval": float(module.bridge.epsilon())},
               "retrieval": {name: m for name, m in rows}}
    (out / "demo_report.json").write_text(json.dumps(results, indent=1))

    print()
    print(f"corpus: {results['corpus']} | events replayed: {dm.events_seen} | corrupt skipped: {dm.skipped_total}")
    print(f"bridge: {results['bridge']}")
    print(f"{'queries':<42} {'Recall@10':>10} {'MRR@10':>8} {'nDCG@10':>8} {'Recall@1':>9}")
    for name, m in rows:
        print(f"{name:<42} {m.get('recall@10', np.nan):>10.3f} {m.get('mrr@10', np.nan):>8.3f} "
              f"{m.get('ndcg@10', np.nan):>8.3f} {m.get('recall@1', np.nan):>9.3f}")
    print(f"\nshards: {out / 'shards'}\nlogs (CSV): {trainer.logger.log_dir}\nreport: {out / 'demo_report.json'}")
    print(f"time: corpus {t_corpus:.1f} s, fit {t_fit:.1f} s, total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
