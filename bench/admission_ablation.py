"""Admission ablation on the demo stream at a fixed memory budget (issue 5).

Stream: the demo corpus (``event_arrays``), one event per docstring item in stream order (topics are
contiguous runs), ``minilm`` item vectors arrive in batches of ``--batch``. Query of event i =
its ``query_minilm``; the relevant item = event i's own item (one relevant item per query).

Budget (every row): at most ``hot_frac`` x n items hot (HNSW, exact) + ``warm_frac`` x n items warm
(IVFPQ 4-bit codes, exact training buffer until trained), hot <= 1 MiB and warm <= 1.5 MiB. The
baselines hold exact vectors, capped at the same item count (hot + warm items), which fits in the
same bytes. Keep-all and full-rebuild have no cap (the ceiling). RAM used = the index's bytes at
the end (``bytes_by_tier`` hot + warm; exact rows x (4d + 8) for baselines; prototypes + 16 B per
member) plus the admission state (prefilter window, centroids, counter).

When queries are asked (both reported):
* ``final``: all n queries once the whole stream is in;
* ``interleaved`` (the streaming number): after each batch in which topics completed, the queries
  of every topic completed so far, subsampled to every ``--every``-th event; pooled over all
  asks. Old topics must survive, fresh ones must already be there.
Evaluation searches do not record hits (they measure, they do not steer the policy).

Rows: the four eviction policies, static and adaptive (u, B); each prefilter basis (with
Space-Saving, static); the 'label_count' victim ranking against the default 'quota'; prototypes
mode; a tiered memory with no admission (its default LRU policy); and the baselines. Several seeds;
mean +- std, and the paired difference from the 'random / static' row on the same seed.

``--popularity zipf``: a skewed stream over the same corpus (``zipf_stream``): topics arrive and
are asked with Zipf popularity, items repeat; there frequency-aware admission has something to find.

    python bench/admission_ablation.py                               # full (a few minutes on one core)
    python bench/admission_ablation.py --popularity zipf --seeds 8   # the skewed stream (~2 min)
    python bench/admission_ablation.py --quick                       # first 512 events, one seed (for tests)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from luma_pl.admission import (  # noqa: E402
    AdaptiveConfig,
    AdmissionConfig,
    AdmissionPipeline,
    ClusterConfig,
    CounterConfig,
    PrefilterConfig,
    PrototypeIndex,
)
from luma_pl.admission.baselines import FifoWindow, FullRebuild, HeapFilter, KeepAll, Reservoir  # noqa: E402
from luma_pl.memory import MemoryConfig, TieredMemory  # noqa: E402
from luma_pl.threads import limit_cpu_threads  # noqa: E402

K = 10


def memory_config(dim: int, n: int, hot_frac: float, warm_frac: float) -> MemoryConfig:
    return MemoryConfig(dim=dim, hot_max_items=int(hot_frac * n), hot_max_bytes=1 << 20,
                        warm_max_items=int(warm_frac * n), warm_max_bytes=3 << 19, nlist=8,
                        pq_m=dim // 8, pq_nbits=4, hnsw_m=16, ef_search=64)


def metrics_of(ids: np.ndarray, target: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-query Recall@10 and nDCG@10 with the project's metrics. Query i's relevant item is
    ``target[i]``; a retrieved event id e is relevant when ``base[e] == target[i]`` (its item; in
    the skewed stream an item arrives several times and any copy answers). The ranking is the
    retrieved list with the first relevant copy kept, plus one extra column holding the relevant
    item when no copy was retrieved (so |R| = 1 for every query)."""
    q, k = ids.shape
    got = np.where(ids >= 0, base[np.clip(ids, 0, len(base) - 1)], -1)
    rel = got == target[:, None]
    rel &= np.cumsum(rel, axis=1) == 1  # later copies of the same item are not a second relevant one
    missing = ~rel.any(1)
    scores = torch.cat([-torch.arange(k, dtype=torch.float64).expand(q, k), torch.full((q, 1), -1e9, dtype=torch.float64)], 1)
    relevance = torch.cat([torch.from_numpy(rel), torch.from_numpy(missing)[:, None]], 1)
    from luma_pl.metrics.functional import per_query

    r, _ = per_query("recall", scores, relevance, K)
    g, _ = per_query("ndcg", scores, relevance, K)
    return r.numpy(), g.numpy()


def state_bytes(pipe: AdmissionPipeline | None) -> int:
    if pipe is None:
        return 0
    p = pipe.prefilter
    return int(p.ring.nbytes + p.scores.nbytes + p.basis.nbytes + pipe.clusterer.centroids.nbytes
               + pipe.clusterer.counts.nbytes + pipe.counter.table.nbytes + 24 * len(pipe.counter))


@dataclasses.dataclass
class Stream:
    """What a row ingests and what it is asked."""

    x: np.ndarray  # (events, d) unit arrival vectors
    base: np.ndarray  # (events,) the corpus item each event carries
    asks: dict  # batch stop -> (query vectors (Q, d), target items (Q,)): the interleaved asks
    final: tuple  # (query vectors, target items) asked once the whole stream is in
    distinct: int  # distinct items in the stream (the budget's reference)


def uniform_stream(x: np.ndarray, q: np.ndarray, topics: list[str], batch: int, every: int) -> Stream:
    """The demo stream as it is: each item once, topics in contiguous runs. After each batch in
    which topics completed, the queries of every completed topic (every ``every``-th event)."""
    n = len(x)
    last_of = {t: i for i, t in enumerate(topics)}
    asks = {}
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        if any(start <= last < stop for last in last_of.values()) or stop == n:
            done = np.array([i for i in range(0, stop, every) if last_of[topics[i]] < stop], np.int64)
            if len(done):
                asks[stop] = (q[done], done)
    return Stream(x, np.arange(n), asks, (q, np.arange(n)), n)


def zipf_stream(x: np.ndarray, q: np.ndarray, topics: list[str], events: int, s: float, seed: int, batch: int,
                ask_every: int, n_queries: int) -> Stream:
    """A skewed stream over the same corpus: each event draws a topic with Zipf(s) popularity (ranks
    shuffled by the seed) and an item of it uniformly, so popular topics arrive, and repeat, far
    more often; queries follow the same popularity. Every ``ask_every`` events ``n_queries`` queries
    ask for items that have arrived (a popular topic's item is asked more often)."""
    rng = np.random.default_rng([seed, 7])
    names = sorted(set(topics))
    members = {t: np.flatnonzero(np.asarray(topics) == t) for t in names}
    w = 1.0 / np.arange(1, len(names) + 1) ** s
    pop = np.empty(len(names))
    pop[rng.permutation(len(names))] = w / w.sum()  # topic -> popularity
    tix = rng.choice(len(names), size=events, p=pop)
    base = np.array([rng.choice(members[names[t]]) for t in tix.tolist()], np.int64)

    def ask(upto: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        seen_t = tix[:upto]
        # a query's topic by popularity among arrived topics, then an arrived item of it
        p = pop * np.isin(np.arange(len(names)), seen_t)
        qt = rng.choice(len(names), size=count, p=p / p.sum())
        arrived = {t: np.unique(base[:upto][seen_t == t]) for t in np.unique(qt).tolist()}
        target = np.array([rng.choice(arrived[t]) for t in qt.tolist()], np.int64)
        return q[target], target

    asks = {}
    next_ask = ask_every
    for start in range(0, events, batch):
        stop = min(events, start + batch)
        if stop >= next_ask:
            asks[stop] = ask(stop, n_queries)
            next_ask += ask_every
    return Stream(x[base], base, asks, ask(events, 4 * n_queries), len(np.unique(base)))


def run_row(row: dict, st: Stream, args) -> dict:
    x = st.x
    n, d = x.shape
    kind = row["kind"]
    pipe = mem = index = None
    if kind in ("items", "prototypes", "lru"):
        if kind != "lru":
            pipe = AdmissionPipeline(row["config"], d)
        if kind == "prototypes":
            pmem = TieredMemory(MemoryConfig(dim=d, hot_max_items=4 * row["config"].counter.capacity,
                                             hot_max_bytes=1 << 21, warm_max_items=0, pq_m=d // 8,
                                             hot_backend="flat"))
            index = PrototypeIndex(pipe, pmem)
        else:
            mem = TieredMemory(memory_config(d, st.distinct, args.hot_frac, args.warm_frac))
    else:
        cap = int(args.hot_frac * st.distinct) + int(args.warm_frac * st.distinct)
        index = {"keep_all": lambda: KeepAll(d), "full_rebuild": lambda: FullRebuild(d),
                 "reservoir": lambda: Reservoir(d, cap, seed=row["seed"]), "fifo": lambda: FifoWindow(d, cap),
                 "heap": lambda: HeapFilter(d, cap)}[kind]()

    def search(qs):
        if mem is not None:
            return mem.search(qs, K, record_hits=False).ids
        return index.search(qs, K)[0]

    ingest_s = 0.0
    inter_r, inter_g = [], []
    for start in range(0, n, args.batch):
        stop = min(n, start + args.batch)
        ids, xb = np.arange(start, stop), x[start:stop]
        t0 = time.perf_counter()
        if kind in ("items",):
            pipe.ingest_items(mem, ids, xb)
        elif kind == "lru":
            mem.insert(ids, xb)
        else:
            index.ingest(ids, xb)
        ingest_s += time.perf_counter() - t0
        if stop in st.asks:
            qs, target = st.asks[stop]
            r, g = metrics_of(search(qs), target, st.base)
            inter_r.append(r)
            inter_g.append(g)
    fr, fg = metrics_of(search(st.final[0]), st.final[1], st.base)
    if mem is not None:
        b = mem.bytes_by_tier()
        index_bytes = b["hot"] + b["warm"]
        audit = mem.audit()
        evicted = mem.counters["evictions"]
        held = audit["hot"] + audit["warm"] + audit["buffer"]
    elif kind == "prototypes":
        index_bytes = index.nbytes()
        held = sum(len(v) for v in index.members.values())
        evicted = index.stats["member_drops"]
    else:
        index_bytes = index.nbytes()
        held = len(index)
        evicted = getattr(index, "evictions", 0)
    out = {"name": row["name"], "group": row["group"], "seed": row["seed"],
           "recall_final": float(fr.mean()), "ndcg_final": float(fg.mean()),
           "recall_interleaved": float(np.concatenate(inter_r).mean()),
           "ndcg_interleaved": float(np.concatenate(inter_g).mean()),
           "ingest_per_s": n / ingest_s, "index_kib": index_bytes / 1024, "state_kib": state_bytes(pipe) / 1024,
           "held": int(held), "evicted": int(evicted),
           "dropped": int(pipe.stats["dropped"]) if pipe is not None else int(getattr(index, "rejected", 0))}
    if mem is not None:
        mem.close()
    if kind == "prototypes":
        index.memory.close()
        index.close()
    return out


def rows_for(seed: int, quick: bool) -> list[dict]:
    pf = {"threshold_mode": "quantile", "alpha": 0.05, "window": 512, "interval": 128, "seed": seed}

    def cfg(policy="space_saving", basis="adaptive", adaptive=False, mode="items", victims="quota"):
        return AdmissionConfig(mode=mode, victims=victims, prefilter=PrefilterConfig(basis=basis, **pf),
                               cluster=ClusterConfig(m=150, seed=seed),
                               counter=CounterConfig(policy=policy, capacity=100, admit_prob=0.05, seed=seed),
                               adaptive=AdaptiveConfig(enabled=adaptive, window=256, novelty_threshold=0.2),
                               upsert_interval=256, probe=8)

    rows = []
    for policy in ("random", "min", "space_saving", "count_min"):
        for adaptive in (False, True):
            rows.append({"kind": "items", "group": "eviction x (u,B)",
                         "name": f"{policy} / {'adaptive' if adaptive else 'static'}",
                         "config": cfg(policy, adaptive=adaptive)})
    for basis in ("fixed", "random", "none"):
        rows.append({"kind": "items", "group": "prefilter basis", "name": f"basis={basis} (space_saving)",
                     "config": cfg(basis=basis)})
    rows.append({"kind": "items", "group": "victim ranking", "name": "victims=label_count (space_saving)",
                 "config": cfg(victims="label_count")})
    rows.append({"kind": "prototypes", "group": "index mode", "name": "prototypes (space_saving)",
                 "config": cfg(mode="prototypes")})
    rows.append({"kind": "lru", "group": "index mode", "name": "tiered, no admission (LRU)"})
    for b in ("keep_all", "full_rebuild", "reservoir", "fifo", "heap"):
        rows.append({"kind": b, "group": "baseline", "name": b})
    if quick:
        keep = {"random / static", "space_saving / static", "space_saving / adaptive", "basis=random (space_saving)",
                "prototypes (space_saving)", "keep_all", "reservoir", "fifo", "heap"}
        rows = [r for r in rows if r["name"] in keep]
    for r in rows:
        r["seed"] = seed
    return rows


def aggregate(results: list[dict]) -> list[dict]:
    out = []
    names = list(dict.fromkeys(r["name"] for r in results))
    for name in names:
        rs = [r for r in results if r["name"] == name]
        agg = {"name": name, "group": rs[0]["group"], "seeds": len(rs)}
        for k in ("recall_final", "ndcg_final", "recall_interleaved", "ndcg_interleaved", "ingest_per_s",
                  "index_kib", "state_kib", "held", "evicted", "dropped"):
            v = np.array([r[k] for r in rs], float)
            agg[k] = float(v.mean()) if k not in ("ingest_per_s",) else float(np.median(v))
            agg[k + "_std"] = float(v.std())
        # paired with the reference row on the same seed (the same stream): the policy's effect
        # without the seed-to-seed variance of the stream itself
        for k in ("recall_interleaved", "recall_final"):
            ref = {r["seed"]: r[k] for r in results if r["name"] == REFERENCE_ROW}
            d = np.array([r[k] - ref[r["seed"]] for r in rs if r["seed"] in ref], float)
            agg[f"delta_{k}"] = float(d.mean()) if len(d) else float("nan")
            agg[f"delta_{k}_std"] = float(d.std()) if len(d) else float("nan")
            agg[f"delta_{k}_n"] = len(d)
        out.append(agg)
    return out


REFERENCE_ROW = "random / static"


def markdown(agg: list[dict], meta: dict) -> str:
    if meta.get("popularity") == "zipf":
        title = (f"# Admission ablation, skewed stream ({meta['events']} events over {meta['distinct']} distinct items, "
                 f"Zipf s={meta['zipf_s']}; budget {meta['budget_items']} items: hot {meta['hot_items']} + warm "
                 f"{meta['warm_items']}; seeds {meta['seeds']})")
        how = (f"Each event draws a topic by Zipf popularity and an item of it (items repeat); queries follow the same "
               f"popularity over arrived items, {meta['queries']} every {meta['ask_every']} events (interleaved) and "
               f"{4 * meta['queries']} at the end (final). A query's relevant item is answered by any copy of it. "
               "The stream changes with the seed, so every row runs every seed.")
    else:
        title = (f"# Admission ablation ({meta['events']} events, budget {meta['budget_items']} items: "
                 f"hot {meta['hot_items']} + warm {meta['warm_items']}; seeds {meta['seeds']})")
        how = ("One relevant item per query (the event's own item). Interleaved = queries of the topics completed so "
               f"far, asked after each topic (every {meta['every']}-th event); final = all queries at the end.")
    lines = [title, "",
             how + " Metrics from luma_pl.metrics. "
             "Ingest = median arrivals/s over seeds; index/state KiB = RAM of the index and of the admission state "
             "(prefilter window, centroids, counter) at the end; held = items retrievable at the end; evicted = admitted "
             "then removed (counted); dropped = never admitted (prefilter drops; rejected by reservoir/heap).", "",
             f"Δ = paired difference of Recall@10 from the '{REFERENCE_ROW}' row on the same seeds (mean ± std).", "",
             "| group | row | R@10 interleaved | Δ interleaved | nDCG@10 interleaved | R@10 final | Δ final | "
             "nDCG@10 final | ingest/s | index KiB | state KiB | held | evicted | dropped |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in agg:
        def pm(k, a=a):
            return f"{a[k]:.3f} ± {a[k + '_std']:.3f}" if a["seeds"] > 1 else f"{a[k]:.3f}"

        def delta(k, a=a):
            if not a[f"delta_{k}_n"]:
                return "—"
            return f"{a[f'delta_{k}']:+.3f} ± {a[f'delta_{k}_std']:.3f}" if a[f"delta_{k}_n"] > 1 else f"{a[f'delta_{k}']:+.3f}"
        lines.append(f"| {a['group']} | {a['name']} | {pm('recall_interleaved')} | {delta('recall_interleaved')} | "
                     f"{pm('ndcg_interleaved')} | {pm('recall_final')} | {delta('recall_final')} | {pm('ndcg_final')} | "
                     f"{a['ingest_per_s']:.0f} | {a['index_kib']:.0f} | "
                     f"{a['state_kib']:.0f} | {a['held']:.0f} | {a['evicted']:.0f} | {a['dropped']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="first 512 events, one seed, a subset of rows")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--every", type=int, default=4, help="interleaved asks every k-th event's query")
    ap.add_argument("--hot-frac", dest="hot_frac", type=float, default=0.15)
    ap.add_argument("--warm-frac", dest="warm_frac", type=float, default=0.40)
    ap.add_argument("--popularity", choices=("uniform", "zipf"), default="uniform",
                    help="uniform: the demo stream as it is; zipf: skewed topic popularity of arrivals and queries")
    ap.add_argument("--zipf-s", dest="zipf_s", type=float, default=1.1, help="Zipf exponent of topic popularity")
    ap.add_argument("--events", type=int, default=0, help="zipf: events in the stream (0 = 2 x the corpus)")
    ap.add_argument("--ask-every", dest="ask_every", type=int, default=256, help="zipf: events between two asks")
    ap.add_argument("--queries", type=int, default=128, help="zipf: queries per ask (4x at the end)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    limit_cpu_threads()
    from luma_pl.corpus import DemoCorpusConfig, build_demo_corpus
    from luma_pl.corpus.demo import event_arrays

    ev = event_arrays(build_demo_corpus(DemoCorpusConfig()))
    x, q, topics = ev["emb"]["minilm"], ev["emb"]["query_minilm"], list(ev["topics"])
    if args.quick:
        x, q, topics, args.seeds = x[:512], q[:512], topics[:512], 1
    zipf = args.popularity == "zipf"
    events = args.events or 2 * len(x)

    def stream_for(seed: int) -> Stream:
        if zipf:
            return zipf_stream(x, q, topics, events, args.zipf_s, seed, args.batch, args.ask_every, args.queries)
        return uniform_stream(x, q, topics, args.batch, args.every)

    results = []
    for seed in range(args.seeds):
        st = stream_for(seed)
        for row in rows_for(seed, args.quick):
            if row["kind"] in ("keep_all", "full_rebuild", "fifo", "heap", "lru") and seed > 0 and not zipf:
                continue  # deterministic rows on a deterministic stream: one seed
            t0 = time.perf_counter()
            res = run_row(row, st, args)
            results.append(res)
            print(f"seed {seed} {row['name']:32s} R@10 int {res['recall_interleaved']:.3f} final {res['recall_final']:.3f} "
                  f"ingest {res['ingest_per_s']:.0f}/s ({time.perf_counter() - t0:.1f}s)", flush=True)
    agg = aggregate(results)
    distinct = st.distinct
    meta = {"events": len(st.x), "distinct": distinct, "hot_items": int(args.hot_frac * distinct),
            "warm_items": int(args.warm_frac * distinct),
            "budget_items": int(args.hot_frac * distinct) + int(args.warm_frac * distinct), "seeds": args.seeds,
            "every": args.every, "batch": args.batch, "quick": args.quick, "popularity": args.popularity,
            "zipf_s": args.zipf_s if zipf else None, "ask_every": args.ask_every, "queries": args.queries}
    os.makedirs(args.out, exist_ok=True)
    tag = ("quick" if args.quick else "demo") + ("_zipf" if zipf else "")
    (Path(args.out) / f"admission_ablation_{tag}.json").write_text(json.dumps({"meta": meta, "rows": agg, "runs": results}, indent=1))
    md = markdown(agg, meta)
    (Path(args.out) / f"admission_ablation_{tag}.md").write_text(md)
    print(md)
    return {"meta": meta, "rows": agg}


if __name__ == "__main__":
    main()
