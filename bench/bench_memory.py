"""Benchmark TieredMemory against raw faiss on the same index configuration, in the same run.

Data: N clustered unit vectors at d=512 (Gaussian blobs around random centres), hot = 10% newest.
Raw faiss baseline: the same IndexHNSWFlat (hot share) + IndexIVFPQ (rest, trained on the same number
of points TieredMemory trains on: the first train_size warm vectors), built and queried directly; its
query merges the two top-k lists with numpy, the least any two-tier search must do. Reported, medians
over --repeats runs where timed:
- bulk ingest vectors/s (one TieredMemory.insert vs raw build) and the ratio (target >= 0.8)
- chunked (streaming) ingest with --chunk rows per call over the first --chunk-n vectors: raw faiss
  adding the same chunks to the same two indexes (first hot share to HNSW, then IVFPQ) vs TieredMemory
  with the HotWhileRoom policy (same placement), plus NewestFirstLRU over --churn-n vectors (every
  item passes through the hot graph and is demoted again: the cost of newest-first in a stream)
- nprobe x oversample grid: Recall@10 and p50 of the built memory (rescoring vs no rescoring)
- single-query p50/p99 latency and the p50 ratio (target <= 1.25), without and with exact rescoring
- Recall@10 against exact brute force, without and with rescoring (oversample 4)
- RAM bytes per item per tier
- a recall-vs-hot-budget sweep (1, 5, 10, 25, 50, 100 %) saved as CSV and PNG under --out

Usage: python bench/bench_memory.py [--n 100000] [--sweep-n 20000] [--out bench/results] [--tmp /tmp]
The 1M run of bench/results/memory_n1000000.*: `nice -n 10 python bench/bench_memory.py --n 1000000
--nlist 1024 --chunk-n 300000 --churn-n 20000 --sweep-n 0 --tmp /tmp` (~10 min on one thread; ~2 GiB of
originals under --tmp, removed at the end). --nlist 1024 because the automatic nlist (~3800 at 1M)
trains k-means on 148k points x 3800 centroids: ~30 min on one thread, too long for this machine.
The sweep: `python bench/bench_memory.py --sweep-only --sweep-n 100000 --tmp /tmp`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import faiss
import numpy as np

from luma_pl.memory import HotWhileRoom, MemoryConfig, NewestFirstLRU, TieredMemory
from luma_pl.memory.tiered import ITEM_BOOKKEEPING_BYTES
from luma_pl.threads import limit_cpu_threads


def clustered(n: int, d: int, rng: np.random.Generator, centres: np.ndarray, noise: float = 0.6) -> np.ndarray:
    """(n, d) unit vectors: a random centre plus isotropic noise (norm ~noise), normalised."""
    c = centres[rng.integers(0, len(centres), n)]
    x = c + rng.standard_normal((n, d)).astype(np.float32) * (noise / np.sqrt(d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_config(args, n: int, hot_frac: float) -> MemoryConfig:
    d = args.d
    hot_items = max(0, int(round(n * hot_frac)))
    warm_items = n - hot_items
    # vector, id, live flag, links, offsets/levels, per-item bookkeeping
    per_hot = d * 4 + 9 + (2 * args.m + 2) * 4 + 12 + ITEM_BOOKKEEPING_BYTES
    return MemoryConfig(
        dim=d, hot_max_items=hot_items, hot_max_bytes=max(int(hot_items * per_hot * 1.1), d * 4 + 8),
        warm_max_items=max(warm_items, 1), warm_max_bytes=max(warm_items, 1) * (d * 4 + 12) + (64 << 20),
        hnsw_m=args.m, ef_construction=args.efc, ef_search=args.efs, nlist=args.nlist, nprobe=args.nprobe,
        pq_m=args.pq_m, pq_nbits=8, **({"oversample": args.oversample} if args.oversample else {}),
    )


def build_tiered(cfg: MemoryConfig, x: np.ndarray, chunk: int, policy=None, tmp=None) -> tuple[TieredMemory, float]:
    mem = TieredMemory(cfg, directory=tempfile.mkdtemp(prefix="bench_mem_", dir=tmp), policy=policy)
    mem._owns_dir = True
    t = time.perf_counter()
    for s in range(0, len(x), chunk):
        mem.insert(np.arange(s, min(s + chunk, len(x))), x[s : s + chunk])
    return mem, time.perf_counter() - t


def new_raw_hot(cfg: MemoryConfig):
    hot = faiss.IndexHNSWFlat(cfg.dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hot.hnsw.efConstruction, hot.hnsw.efSearch = cfg.ef_construction, cfg.ef_search
    return hot


def train_raw_warm(cfg: MemoryConfig, train_x: np.ndarray):
    q = faiss.IndexFlatIP(cfg.dim)
    warm = faiss.IndexIVFPQ(q, cfg.dim, cfg.resolved_nlist(), cfg.pq_m, cfg.pq_nbits, faiss.METRIC_INNER_PRODUCT)
    warm.cp.seed = warm.pq.cp.seed = cfg.seed
    warm.pq.cp.niter = cfg.pq_train_iterations  # the same training as the memory's
    warm.train(train_x)
    warm.nprobe = cfg.resolved_nprobe(warm.nlist)
    q.this.disown()
    warm.own_fields = True
    return warm


def build_raw(cfg: MemoryConfig, x: np.ndarray):
    """Raw faiss, same configuration: HNSW over the newest hot share, IVFPQ over the rest (trained on
    its first train_size vectors, as TieredMemory trains on its buffer)."""
    hot_n = cfg.hot_max_items
    t = time.perf_counter()
    hot = new_raw_hot(cfg)
    hot.add(x[len(x) - hot_n :])
    warm_x = x[: len(x) - hot_n]
    warm = None
    if len(warm_x) >= cfg.train_size():
        warm = train_raw_warm(cfg, warm_x[: cfg.train_size()])
        warm.add_with_ids(warm_x, np.arange(len(warm_x), dtype=np.int64))
    return (hot, warm, len(x) - hot_n), time.perf_counter() - t


def raw_refine(raw, x: np.ndarray):
    """faiss' own rescoring on the raw warm IVFPQ: IndexRefineFlat over the same exact vectors (in RAM;
    TieredMemory reads them from its memory-mapped originals file). Not part of the ingest timing."""
    hot, warm, offset = raw
    if warm is None:
        return raw
    xw = np.ascontiguousarray(x[:offset])  # warm ids are 0..offset-1, i.e. rows of the refine storage
    refine = faiss.IndexRefineFlat(warm, faiss.swig_ptr(xw))  # copies xw into its IndexFlat (same metric)
    return (hot, refine, offset)


def raw_chunked(cfg: MemoryConfig, x: np.ndarray, chunk: int) -> float:
    """Raw faiss fed the stream in chunks with the placement HotWhileRoom makes: the first hot_max_items
    vectors to HNSW, the rest to IVFPQ (trained once train_size of them have arrived, buffered till then)."""
    t = time.perf_counter()
    hot, warm, hot_n, pending, added = new_raw_hot(cfg), None, cfg.hot_max_items, [], 0
    for s in range(0, len(x), chunk):
        c = x[s : s + chunk]
        h = max(0, min(len(c), hot_n - s))
        if h:
            hot.add(c[:h])
        c = c[h:]
        if len(c) == 0:
            continue
        if warm is None:
            pending.append(c)
            if sum(map(len, pending)) >= cfg.train_size():
                buf = np.concatenate(pending)
                warm = train_raw_warm(cfg, buf)
                warm.add_with_ids(buf, np.arange(added, added + len(buf), dtype=np.int64))
                added += len(buf)
        else:
            warm.add_with_ids(c, np.arange(added, added + len(c), dtype=np.int64))
            added += len(c)
    return time.perf_counter() - t


def raw_search(raw, q: np.ndarray, k: int, k_factor: int = 0):
    hot, warm, offset = raw
    parts_s, parts_i = [], []
    if hot.ntotal:
        s, i = hot.search(q, k)
        parts_s.append(s)
        parts_i.append(np.where(i >= 0, i + offset, -1))
    if warm is not None:
        if k_factor:
            params = faiss.IndexRefineSearchParameters()
            params.k_factor = float(k_factor)
            s, i = warm.search(q, k, params=params)
        else:
            s, i = warm.search(q, k)
        parts_s.append(s)
        parts_i.append(i)
    s, i = np.concatenate(parts_s, 1), np.concatenate(parts_i, 1)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)


def latencies(fn, queries: np.ndarray) -> np.ndarray:
    out = np.empty(len(queries))
    for j in range(len(queries)):
        t = time.perf_counter()
        fn(queries[j : j + 1])
        out[j] = time.perf_counter() - t
    return out * 1e3  # ms


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


def exact_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(q, k)[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--hot", type=float, default=0.10, help="hot share of N")
    p.add_argument("--chunk", type=int, default=256, help="streaming ingest batch size (0 = skip)")
    p.add_argument("--chunk-n", type=int, default=0, help="vectors streamed in the chunked measurement (0 = N)")
    p.add_argument("--churn-n", type=int, default=20_000, help="vectors streamed through NewestFirstLRU (0 = skip)")
    p.add_argument("--tmp", default=None, help="folder for the originals files (e.g. /tmp)")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--m", type=int, default=32)
    p.add_argument("--efc", type=int, default=80)
    p.add_argument("--efs", type=int, default=64)
    p.add_argument("--nlist", type=int, default=0)
    p.add_argument("--nprobe", type=int, default=16, help="MemoryConfig.nprobe (16 = its default; 0 = nlist/64)")
    p.add_argument("--pq-m", type=int, default=64)
    p.add_argument("--oversample", type=int, default=0, help="0 = MemoryConfig's default")
    p.add_argument("--repeats", type=int, default=3, help="latency passes (median of per-pass p50/p99)")
    p.add_argument("--sweep-n", type=int, default=20_000, help="N for the hot-budget sweep (0 = skip)")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--sweep-only", action="store_true", help="run only the hot-budget sweep")
    args = p.parse_args()
    limit_cpu_threads()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.clusters, args.d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    if args.sweep_only:
        return sweep(args, rng, centres)
    x = clustered(args.n, args.d, rng, centres)
    q = clustered(args.queries, args.d, rng, centres)
    k = args.k
    cfg = make_config(args, args.n, args.hot)
    out = {"n": args.n, "d": args.d, "hot_items": cfg.hot_max_items, "nlist": cfg.resolved_nlist(),
           "nprobe": cfg.resolved_nprobe(), "oversample": cfg.oversample, "pq_m": cfg.pq_m, "hnsw_m": cfg.hnsw_m,
           "ef_construction": cfg.ef_construction, "ef_search": cfg.ef_search, "queries": args.queries, "k": k,
           "threads": 1, "train_size": cfg.train_size()}
    print(f"N={args.n} d={args.d} hot={cfg.hot_max_items} nlist={cfg.resolved_nlist()} nprobe={cfg.resolved_nprobe()} "
          f"oversample={cfg.oversample} pq_m={cfg.pq_m} M={cfg.hnsw_m} efC={cfg.ef_construction} "
          f"efS={cfg.ef_search} train_size={cfg.train_size()} threads=1", flush=True)

    if args.chunk:
        cn = args.chunk_n or args.n
        t_rc = raw_chunked(cfg, x[:cn], args.chunk)
        m2, t_mc = build_tiered(cfg, x[:cn], args.chunk, HotWhileRoom(), args.tmp)
        m2.audit()
        m2.close()
        out["ingest_chunked"] = {"chunk": args.chunk, "n": cn, "raw_vps": cn / t_rc, "mem_vps": cn / t_mc,
                                 "ratio": t_rc / t_mc, "policy": "HotWhileRoom"}
        print(f"ingest chunked x{args.chunk} over {cn}: raw faiss {cn / t_rc:9.0f} vec/s   TieredMemory(HotWhileRoom) "
              f"{cn / t_mc:9.0f} vec/s   ratio {t_rc / t_mc:.2f} (target >= 0.8)", flush=True)
        if args.churn_n:
            hn = args.churn_n
            # automatic nlist for hn items, so both sides train their IVFPQ (an explicit --nlist sized
            # for N would leave both warm tiers untrained and the raw side doing nothing but HNSW adds)
            ccfg = dataclasses.replace(make_config(args, hn, args.hot), nlist=0)
            t_rh = raw_chunked(ccfg, x[:hn], args.chunk)
            m3, t_mh = build_tiered(ccfg, x[:hn], args.chunk, NewestFirstLRU(), args.tmp)
            st = m3.stats()
            m3.close()
            out["ingest_chunked_newest_first"] = {"chunk": args.chunk, "n": hn, "raw_vps": hn / t_rh,
                                                  "mem_vps": hn / t_mh, "ratio": t_rh / t_mh,
                                                  "hot_rebuilds": st["hot_rebuilds"], "demotions": st["demotions"]}
            print(f"ingest chunked x{args.chunk} over {hn}, NewestFirstLRU: raw faiss {hn / t_rh:9.0f} vec/s   "
                  f"TieredMemory {hn / t_mh:9.0f} vec/s   ratio {t_rh / t_mh:.2f}  ({st['demotions']} demotions, "
                  f"{st['hot_rebuilds']} graph rebuilds)", flush=True)

    raw, t_raw = build_raw(cfg, x)
    mem, t_mem = build_tiered(cfg, x, args.n, None, args.tmp)
    out["ingest_bulk"] = {"raw_vps": args.n / t_raw, "mem_vps": args.n / t_mem, "ratio": t_raw / t_mem}
    print(f"ingest bulk  raw faiss {args.n / t_raw:9.0f} vec/s   TieredMemory {args.n / t_mem:9.0f} vec/s   "
          f"ratio {t_raw / t_mem:.2f} (target >= 0.8)", flush=True)

    os_ = cfg.resolved_oversample(mem.warm.ivf_count)
    out["oversample"] = os_
    refined = raw_refine(raw, x)
    runs = {"raw": [], "mem": [], "raw_refine": [], "mem_rescore": []}
    for _ in range(args.repeats):
        runs["raw"].append(latencies(lambda a: raw_search(raw, a, k), q))
        runs["mem"].append(latencies(lambda a: mem.search(a, k, rescore=False, record_hits=False), q))
        runs["raw_refine"].append(latencies(lambda a: raw_search(refined, a, k, os_), q))
        runs["mem_rescore"].append(latencies(lambda a: mem.search(a, k, record_hits=False), q))
    stat = {name: (np.median([np.percentile(r, 50) for r in v]), np.median([np.percentile(r, 99) for r in v]))
            for name, v in runs.items()}
    base_of = {"raw": "raw", "mem": "raw", "raw_refine": "raw_refine", "mem_rescore": "raw_refine"}
    out["query_ms"] = {name: {"p50": p50, "p99": p99, "p50_ratio_vs_raw": p50 / stat[base_of[name]][0]}
                       for name, (p50, p99) in stat.items()}
    for name, (p50, p99) in stat.items():
        print(f"query   {name:12s} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  p50 ratio vs {base_of[name]} "
              f"{p50 / stat[base_of[name]][0]:.2f}", flush=True)

    truth = exact_topk(x, q, k)
    r_raw = recall(raw_search(raw, q, k)[1], truth)
    r_mem = recall(mem.search(q, k, rescore=False, record_hits=False).ids, truth)
    r_res = recall(mem.search(q, k, record_hits=False).ids, truth)
    r_ref = recall(raw_search(refined, q, k, os_)[1], truth)
    print(f"Recall@{k}  raw faiss {r_raw:.3f}  TieredMemory {r_mem:.3f}  rescored x{os_}: raw faiss IndexRefineFlat "
          f"{r_ref:.3f}  TieredMemory {r_res:.3f}")
    out["recall_at_k"] = {"raw_faiss": r_raw, "mem_no_rescore": r_mem, "raw_refine": r_ref, "mem_rescored": r_res}
    # PQ score bias of the returned warm hits (no rescoring): selection inflates the top PQ scores
    r0 = mem.search(q, k, rescore=False, record_hits=False)
    w = r0.tiers == 1
    if w.any():
        keys = np.array([mem.key_of[i] for i in r0.ids[w].tolist()])
        qi = np.nonzero(w)[0]
        ex = np.einsum("nd,nd->n", q[qi], mem.originals.get(keys))
        out["pq_topk_score_bias"] = float(np.mean(r0.scores[w] - ex))
        print(f"PQ score - exact score of returned warm hits: mean {out['pq_topk_score_bias']:+.4f}")
    b, s = mem.bytes_by_tier(), mem.stats()
    n_warm = s["warm"] + s["buffer"]
    out["bytes_per_item"] = {"hot": b["hot"] / max(s["hot"], 1), "warm": b["warm"] / max(n_warm, 1),
                             "bookkeeping_outside_budgets": b["bookkeeping"] / args.n,
                             "originals_disk": b["originals_disk"] / args.n}
    out["items"] = {"hot": s["hot"], "warm": s["warm"], "buffer": s["buffer"], "evicted": s["evicted"]}
    print(f"RAM bytes/item  hot {b['hot'] / max(s['hot'], 1):.0f}  warm {b['warm'] / max(n_warm, 1):.1f}  "
          f"(both incl. {ITEM_BOOKKEEPING_BYTES} B bookkeeping)  outside budgets {b['bookkeeping'] / args.n:.1f}  "
          f"(originals on disk {b['originals_disk'] / args.n:.0f})")
    print(f"items   hot {s['hot']} warm {s['warm']} buffer {s['buffer']} evicted {s['evicted']}  zeta_max {s['zeta_max']:.3f}")
    out["grid"] = grid(mem, q, truth, k)
    mem.audit()
    mem.close()
    write_results(args, out)

    if args.sweep_n:
        sweep(args, rng, centres)



def grid(mem: TieredMemory, q: np.ndarray, truth: np.ndarray, k: int) -> list[dict]:
    """Recall@k and single-query p50 over nprobe x oversample on the built memory (1 = no rescoring)."""
    rows = []
    if mem.warm.index is None:  # the warm tier never reached its training size: nothing to tune
        print("grid: skipped, the warm tier is untrained (every item is hot or buffered exact)", flush=True)
        return rows
    nlist = mem.warm.index.nlist
    qs = q[:100]
    for nprobe in (8, 16, 32):
        if nprobe > nlist:
            continue
        mem.warm.index.nprobe = nprobe
        for os_ in (1, 4, 10, 16, 32, 48, 64, 100):
            kw = {"rescore": False} if os_ == 1 else {"oversample": os_}
            r = recall(mem.search(q, k, record_hits=False, **kw).ids, truth)
            p50 = float(np.percentile(latencies(lambda a, kw=kw: mem.search(a, k, record_hits=False, **kw), qs), 50))
            rows.append({"nprobe": nprobe, "oversample": os_, "recall": r, "p50_ms": p50})
            print(f"grid nprobe {nprobe:3d} oversample {os_:2d}{' (no rescoring)' if os_ == 1 else ''}: "
                  f"Recall@{k} {r:.3f}  p50 {p50:.3f} ms", flush=True)
    mem.warm.index.nprobe = mem.cfg.resolved_nprobe(nlist)
    return rows


def write_results(args, out: dict) -> None:
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"memory_n{args.n}")
    with open(base + ".json", "w") as f:
        json.dump(out, f, indent=1)
    lines = [f"# TieredMemory vs raw faiss, N={out['n']}, d={out['d']}, hot={out['hot_items']} items",
             "", f"nlist {out['nlist']}, nprobe {out['nprobe']}, oversample {out['oversample']}, PQ{out['pq_m']}x8, "
             f"HNSW M={out['hnsw_m']} efC={out['ef_construction']} efS={out['ef_search']}, 1 thread, "
             f"{out['queries']} queries, k={out['k']}", "",
             "| measure | raw faiss | TieredMemory | ratio |", "| --- | --- | --- | --- |"]
    ib = out["ingest_bulk"]
    lines.append(f"| bulk ingest (vec/s) | {ib['raw_vps']:.0f} | {ib['mem_vps']:.0f} | {ib['ratio']:.2f} |")
    for key, name in (("ingest_chunked", "HotWhileRoom"), ("ingest_chunked_newest_first", "NewestFirstLRU")):
        if key in out:
            c = out[key]
            lines.append(f"| chunked ingest x{c['chunk']}, first {c['n']} ({name}) (vec/s) | {c['raw_vps']:.0f} | "
                         f"{c['mem_vps']:.0f} | {c['ratio']:.2f} |")
    qm = out["query_ms"]
    for name, ref, label in (("mem", "raw", "no rescoring"),
                              ("mem_rescore", "raw_refine", f"rescored x{out['oversample']}; raw = IndexRefineFlat")):
        lines.append(f"| query p50 / p99 ms ({label}) | {qm[ref]['p50']:.3f} / {qm[ref]['p99']:.3f} | "
                     f"{qm[name]['p50']:.3f} / {qm[name]['p99']:.3f} | {qm[name]['p50_ratio_vs_raw']:.2f} |")
    r = out["recall_at_k"]
    lines.append(f"| Recall@{out['k']} (no rescoring) | {r['raw_faiss']:.3f} | {r['mem_no_rescore']:.3f} | |")
    lines.append(f"| Recall@{out['k']} (rescored x{out['oversample']}) | {r['raw_refine']:.3f} | {r['mem_rescored']:.3f} | |")
    if "pq_topk_score_bias" in out:
        lines.append(f"| PQ score - exact score of returned warm hits (no rescoring) | | {out['pq_topk_score_bias']:+.4f} | |")
    b = out["bytes_per_item"]
    lines += ["", f"RAM bytes per item: hot {b['hot']:.0f}, warm {b['warm']:.1f} (both include "
              f"{ITEM_BOOKKEEPING_BYTES} B of bookkeeping), outside budgets {b['bookkeeping_outside_budgets']:.1f}, "
              f"originals on disk {b['originals_disk']:.0f}.", "",
              "| nprobe | oversample | Recall@k | p50 ms |", "| --- | --- | --- | --- |"]
    lines += [f"| {g['nprobe']} | {g['oversample'] if g['oversample'] > 1 else '1 (no rescoring)'} | {g['recall']:.3f} | "
              f"{g['p50_ms']:.3f} |" for g in out["grid"]]
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"results {base}.json {base}.md")


def sweep(args, rng, centres) -> None:
    n = args.sweep_n
    x = clustered(n, args.d, rng, centres)
    q = clustered(min(args.queries, 200), args.d, rng, centres)
    truth = exact_topk(x, q, args.k)
    rows = []
    for frac in (0.01, 0.05, 0.10, 0.25, 0.50, 1.00):
        cfg = make_config(args, n, frac)
        mem, _ = build_tiered(cfg, x, n, None, args.tmp)
        r0 = recall(mem.search(q, args.k, rescore=False, record_hits=False).ids, truth)
        r1 = recall(mem.search(q, args.k, record_hits=False).ids, truth)
        b = mem.bytes_by_tier()
        rows.append((frac, r0, r1, (b["hot"] + b["warm"]) / n))
        print(f"sweep N={n} hot {frac:5.0%}  Recall@{args.k} {r0:.3f}  rescored {r1:.3f}  RAM {rows[-1][3]:.0f} B/item")
        mem.close()
    os.makedirs(args.out, exist_ok=True)
    csv = os.path.join(args.out, f"memory_hot_sweep_n{n}.csv")
    with open(csv, "w") as f:
        f.write("hot_fraction,recall_at_k,recall_at_k_rescored,ram_bytes_per_item\n")
        for r in rows:
            f.write(f"{r[0]},{r[1]:.4f},{r[2]:.4f},{r[3]:.1f}\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    fr = [100 * r[0] for r in rows]
    ax.plot(fr, [r[1] for r in rows], "o-", label="PQ scores")
    ax.plot(fr, [r[2] for r in rows], "s-", label="rescored (default oversample)")
    ax.set_xscale("log")
    ax.set_xlabel("hot budget (% of N)")
    ax.set_ylabel(f"Recall@{args.k} vs exact")
    ax.set_title(f"TieredMemory, N={n}, d={args.d}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = os.path.join(args.out, f"memory_hot_sweep_n{n}.png")
    fig.savefig(png, dpi=120)
    print(f"sweep table {csv}\nsweep plot  {png}")


if __name__ == "__main__":
    main()
