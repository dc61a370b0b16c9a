"""Benchmark TieredMemory against raw faiss on the same index configuration, in the same run.

Data: N clustered unit vectors at d=512 (Gaussian blobs around random centres), hot = 10% newest.
Raw faiss baseline: the same IndexHNSWFlat (hot share) + IndexIVFPQ (rest, trained on the rest), built
and queried directly; its query merges the two top-k lists with numpy, the least any two-tier search
must do. Reported, medians over --repeats runs where timed:
- ingest vectors/s (TieredMemory.insert of everything vs raw build) and the ratio (target >= 0.8)
- single-query p50/p99 latency and the p50 ratio (target <= 1.25), without and with exact rescoring
- Recall@10 against exact brute force, without and with rescoring (oversample 4)
- RAM bytes per item per tier
- a recall-vs-hot-budget sweep (1, 5, 10, 25, 50, 100 %) saved as CSV and PNG under --out

Usage: python bench/bench_memory.py [--n 100000] [--sweep-n 20000] [--out bench/results]
(`--n 1000000` is the big run: ~2 GiB originals on disk, ~10 min of training on one thread.)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import faiss
import numpy as np

from luma_pl.memory import MemoryConfig, TieredMemory
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
    per_hot = d * 4 + 9 + (2 * args.m + 2) * 4 + 12  # vector, id, live flag, links, offsets/levels
    return MemoryConfig(
        dim=d, hot_max_items=hot_items, hot_max_bytes=max(int(hot_items * per_hot * 1.1), d * 4 + 8),
        warm_max_items=max(warm_items, 1), warm_max_bytes=max(warm_items, 1) * (d * 4 + 12) + (64 << 20),
        hnsw_m=args.m, ef_construction=args.efc, ef_search=args.efs, nlist=args.nlist, nprobe=args.nprobe,
        pq_m=args.pq_m, pq_nbits=8, oversample=args.oversample,
    )


def build_tiered(cfg: MemoryConfig, x: np.ndarray, chunk: int) -> tuple[TieredMemory, float]:
    mem = TieredMemory(cfg, directory=tempfile.mkdtemp(prefix="bench_mem_"))
    mem._owns_dir = True
    t = time.perf_counter()
    for s in range(0, len(x), chunk):
        mem.insert(np.arange(s, min(s + chunk, len(x))), x[s : s + chunk])
    return mem, time.perf_counter() - t


def build_raw(cfg: MemoryConfig, x: np.ndarray):
    """Raw faiss, same configuration: HNSW over the newest hot share, IVFPQ over the rest."""
    hot_n = cfg.hot_max_items
    t = time.perf_counter()
    hot = faiss.IndexHNSWFlat(cfg.dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hot.hnsw.efConstruction, hot.hnsw.efSearch = cfg.ef_construction, cfg.ef_search
    hot.add(x[len(x) - hot_n :])
    warm_x = x[: len(x) - hot_n]
    warm = None
    if len(warm_x) >= cfg.train_size():
        q = faiss.IndexFlatIP(cfg.dim)
        warm = faiss.IndexIVFPQ(q, cfg.dim, cfg.resolved_nlist(), cfg.pq_m, cfg.pq_nbits, faiss.METRIC_INNER_PRODUCT)
        warm.cp.seed = warm.pq.cp.seed = cfg.seed
        warm.train(warm_x)
        warm.add_with_ids(warm_x, np.arange(len(warm_x), dtype=np.int64))
        warm.nprobe = min(cfg.nprobe, warm.nlist)
    return (hot, warm, len(x) - hot_n), time.perf_counter() - t


def raw_search(raw, q: np.ndarray, k: int):
    hot, warm, offset = raw
    parts_s, parts_i = [], []
    if hot.ntotal:
        s, i = hot.search(q, k)
        parts_s.append(s)
        parts_i.append(np.where(i >= 0, i + offset, -1))
    if warm is not None:
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
    p.add_argument("--chunk", type=int, default=0, help="ingest batch size (0 = one call)")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--m", type=int, default=32)
    p.add_argument("--efc", type=int, default=80)
    p.add_argument("--efs", type=int, default=64)
    p.add_argument("--nlist", type=int, default=0)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--pq-m", type=int, default=64)
    p.add_argument("--oversample", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="latency passes (median of per-pass p50/p99)")
    p.add_argument("--sweep-n", type=int, default=20_000, help="N for the hot-budget sweep (0 = skip)")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    limit_cpu_threads()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.clusters, args.d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = clustered(args.n, args.d, rng, centres)
    q = clustered(args.queries, args.d, rng, centres)
    k = args.k
    cfg = make_config(args, args.n, args.hot)
    print(f"N={args.n} d={args.d} hot={cfg.hot_max_items} nlist={cfg.resolved_nlist()} nprobe={cfg.nprobe} "
          f"pq_m={cfg.pq_m} M={cfg.hnsw_m} efC={cfg.ef_construction} efS={cfg.ef_search} threads=1")

    raw, t_raw = build_raw(cfg, x)
    mem, t_mem = build_tiered(cfg, x, args.chunk or args.n)
    print(f"ingest  raw faiss {args.n / t_raw:9.0f} vec/s   TieredMemory {args.n / t_mem:9.0f} vec/s   "
          f"ratio {t_raw / t_mem:.2f} (target >= 0.8)")

    runs = {"raw": [], "mem": [], "mem_rescore": []}
    for _ in range(args.repeats):
        runs["raw"].append(latencies(lambda a: raw_search(raw, a, k), q))
        runs["mem"].append(latencies(lambda a: mem.search(a, k, rescore=False, record_hits=False), q))
        runs["mem_rescore"].append(latencies(lambda a: mem.search(a, k, record_hits=False), q))
    stat = {name: (np.median([np.percentile(r, 50) for r in v]), np.median([np.percentile(r, 99) for r in v]))
            for name, v in runs.items()}
    for name, (p50, p99) in stat.items():
        print(f"query   {name:12s} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  p50 ratio vs raw {p50 / stat['raw'][0]:.2f}")

    truth = exact_topk(x, q, k)
    r_raw = recall(raw_search(raw, q, k)[1], truth)
    r_mem = recall(mem.search(q, k, rescore=False, record_hits=False).ids, truth)
    r_res = recall(mem.search(q, k, record_hits=False).ids, truth)
    print(f"Recall@{k}  raw faiss {r_raw:.3f}  TieredMemory {r_mem:.3f}  with rescoring x{cfg.oversample} {r_res:.3f}")
    b, s = mem.bytes_by_tier(), mem.stats()
    n_warm = s["warm"] + s["buffer"]
    print(f"RAM bytes/item  hot {b['hot'] / max(s['hot'], 1):.0f}  warm {b['warm'] / max(n_warm, 1):.1f}  "
          f"bookkeeping {b['bookkeeping'] / args.n:.1f}  (originals on disk {b['originals_disk'] / args.n:.0f})")
    print(f"items   hot {s['hot']} warm {s['warm']} buffer {s['buffer']} evicted {s['evicted']}  zeta_max {s['zeta_max']:.3f}")
    mem.audit()
    mem.close()

    if args.sweep_n:
        sweep(args, rng, centres)


def sweep(args, rng, centres) -> None:
    n = args.sweep_n
    x = clustered(n, args.d, rng, centres)
    q = clustered(min(args.queries, 200), args.d, rng, centres)
    truth = exact_topk(x, q, args.k)
    rows = []
    for frac in (0.01, 0.05, 0.10, 0.25, 0.50, 1.00):
        cfg = make_config(args, n, frac)
        mem, _ = build_tiered(cfg, x, n)
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
    ax.plot(fr, [r[2] for r in rows], "s-", label=f"rescored x{args.oversample}")
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
