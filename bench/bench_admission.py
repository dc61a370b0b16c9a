"""End-to-end admission ingest rate vs raw faiss inserts of the same tiers, in the same run.

Stream: N precomputed 512-d unit vectors (a drifting mixture of topics), in batches.
* pipeline: ``AdmissionPipeline.ingest_items`` = prefilter (adaptive, quantile) + online clustering +
  Space-Saving counter + ``TieredMemory.insert`` (heavy -> hot HNSW, others -> warm IVFPQ, with its
  exact buffer until trained, originals store, bookkeeping).
* raw faiss: the same rows into the same tiers by hand: the rows the pipeline sent hot into an
  ``IndexHNSWFlat`` (MemoryConfig defaults: M=32, efConstruction=80), the others into an ``IndexIVFPQ`` trained on the same
  number of buffered rows at the same point, batch by batch. No admission, no bookkeeping.
The budgets hold the whole stream (no demotion or eviction churn), so the ratio is the price of
the admission work plus the memory's bookkeeping. Medians over ``--repeats``; target >= 0.8x.

``--hot-frac F`` (< 1): the steady state of a long stream, where the hot tier holds F x N items and
is full: each arrival still enters hot (its cluster is tracked) and pushes an older one to warm, the
graph is rebuilt as tombstones accumulate, and the warm IVFPQ retrains when zeta drifts. The raw
baseline then places each row once, straight into the tier where it ends up (no demotion, one
training): the ratio is the price of keeping the newest items hot, not a like-for-like insert.

    python bench/bench_admission.py [--n 10000] [--repeats 3] [--hot-frac 1.0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from luma_pl.admission import (  # noqa: E402
    AdmissionConfig,
    AdmissionPipeline,
    ClusterConfig,
    CounterConfig,
    PrefilterConfig,
)
from luma_pl.memory import MemoryConfig, TieredMemory  # noqa: E402
from luma_pl.memory.tiers import BUFFER, HOT, WARM  # noqa: E402
from luma_pl.threads import limit_cpu_threads  # noqa: E402

D = 512


def stream(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((40, D)).astype(np.float32)
    topic = np.minimum((np.arange(n) / n * 40).astype(int) + rng.integers(0, 3, n), 39)  # drifting topics
    x = centers[topic] + 0.8 * rng.standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def mem_config(n: int, hot_frac: float = 1.0, background: bool = False, retrain_mode: str | None = None,
               **overrides) -> MemoryConfig:
    mode = {} if retrain_mode is None else {"retrain_mode": retrain_mode}
    return MemoryConfig(**{**dict(dim=D, hot_max_items=int(hot_frac * n), hot_max_bytes=1 << 31, warm_max_items=n,
                                  warm_max_bytes=1 << 31, nlist=32, pq_m=64, pq_nbits=8,
                                  retrain_in_background=background), **mode, **overrides})


def memory_recall(mem: TieredMemory, q: np.ndarray, k: int = 10) -> float:
    """Recall@k of the memory's (rescored) search against exact search over every live item."""
    keys = np.concatenate([mem.keys_in(t) for t in (HOT, WARM, BUFFER)])
    exact = mem.ids[keys][np.argsort(-(q @ mem.originals.get(keys).T), axis=1)[:, :k]]
    got = mem.search(q, k, record_hits=False).ids
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(got, exact, strict=True)]))


def run_pipeline(x: np.ndarray, batch: int, hot_frac: float = 1.0, background: bool = False,
                 retrain_mode: str | None = None, queries: np.ndarray | None = None,
                 overrides: dict | None = None) -> tuple[float, np.ndarray, dict]:
    n = len(x)
    cfg = AdmissionConfig(prefilter=PrefilterConfig(basis="adaptive", threshold_mode="quantile", alpha=0.05,
                                                    window=1024, interval=1024),
                          cluster=ClusterConfig(m=150), counter=CounterConfig(policy="space_saving", capacity=100))
    pipe = AdmissionPipeline(cfg, D)
    mem = TieredMemory(mem_config(n, hot_frac, background, retrain_mode, **(overrides or {})))
    keep = np.zeros(n, bool)
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        d = pipe.ingest_items(mem, np.arange(s, min(n, s + batch)), x[s:s + batch])
        keep[s:s + batch] = d.keep
    dt = time.perf_counter() - t0
    audit = mem.audit()
    info = {"hot": audit["hot"], "warm": audit["warm"] + audit["buffer"], "dropped": int((~keep).sum()),
            "train_size": mem.warm.train_size, "demotions": mem.counters["demotions"],
            "hot_rebuilds": mem.hot.rebuilds, "warm_trainings": mem.warm.trainings,
            "retrain_waits": mem.counters["retrain_waits"], "retrain_wait_ms": mem.counters["retrain_wait_ms"],
            "retrain_mode": mem.cfg.retrain_mode, "retrain_ms": mem.counters["retrain_ms"],
            "retrain_encode_ms": mem.counters["retrain_encode_ms"],
            "recall_at_10": memory_recall(mem, queries) if queries is not None else None}
    # where each row ended up: 0 hot, 1 warm, -1 never admitted
    route = np.full(n, -1)
    route[keep] = [0 if mem.location(i) == "hot" else 1 for i in np.flatnonzero(keep).tolist()]
    mem.close()
    return dt, route, info


def run_raw(x: np.ndarray, batch: int, route: np.ndarray, train_size: int) -> float:
    cfg = mem_config(len(x))
    hnsw = faiss.IndexHNSWFlat(D, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = cfg.ef_construction
    quant = faiss.IndexFlatIP(D)
    ivf = faiss.IndexIVFPQ(quant, D, cfg.nlist, cfg.pq_m, cfg.pq_nbits, faiss.METRIC_INNER_PRODUCT)
    ivf.pq.cp.niter = cfg.pq_train_iterations  # the same training as the memory's
    buf: list[np.ndarray] = []
    buffered = 0
    t0 = time.perf_counter()
    for s in range(0, len(x), batch):
        xb, rb = x[s:s + batch], route[s:s + batch]
        h = xb[rb == 0]
        if len(h):
            hnsw.add(h)
        w = xb[rb == 1]
        if len(w):
            if ivf.is_trained:
                ivf.add(w)
            else:
                buf.append(w)
                buffered += len(w)
                if buffered >= train_size:
                    allw = np.concatenate(buf)
                    ivf.train(allw)
                    ivf.add(allw)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--background-retrain", dest="background", action="store_true",
                    help="retrain the warm IVFPQ in a worker process (MemoryConfig.retrain_in_background)")
    ap.add_argument("--retrain-mode", dest="retrain_mode", default=None,
                    help="MemoryConfig.retrain_mode for drift retrainings (default: the config's default)")
    ap.add_argument("--hot-frac", dest="hot_frac", type=float, default=1.0,
                    help="hot budget as a fraction of N (< 1: the steady state with a full hot tier)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="a MemoryConfig override key=value (repeatable), e.g. retrain_drift_factor=2.0")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    limit_cpu_threads()
    x = stream(args.n + 200)
    x, q = x[: args.n], x[args.n:]  # queries from the stream's latest topics
    overrides = {}
    for spec in args.overrides:
        key, value = spec.split("=", 1)
        default = getattr(MemoryConfig, key)
        overrides[key] = (value == "True") if isinstance(default, bool) else type(default)(value)
    pipe_s, raw_s = [], []
    for _ in range(args.repeats):
        dt, route, info = run_pipeline(x, args.batch, args.hot_frac, args.background, args.retrain_mode, q,
                                       overrides)
        pipe_s.append(dt)
        raw_s.append(run_raw(x, args.batch, route, info["train_size"]))
    p, r = float(np.median(pipe_s)), float(np.median(raw_s))
    res = {"n": args.n, "d": D, "batch": args.batch, "repeats": args.repeats, "hot_frac": args.hot_frac,
           "background_retrain": args.background,
           "pipeline_vec_per_s": args.n / p, "raw_faiss_vec_per_s": args.n / r, "ratio": r / p,
           "pipeline_s": pipe_s, "raw_s": raw_s, **info}
    print(json.dumps(res, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = (("" if args.hot_frac >= 1 else f"_hot{args.hot_frac:g}") + ("_bg" if args.background else "")
           + (f"_{args.retrain_mode}" if args.retrain_mode else "")
           + "".join(f"_{k}{v}" for k, v in overrides.items()))
    res["overrides"] = overrides
    (out / f"admission_bench{tag}.json").write_text(json.dumps(res, indent=1))
    what = ("raw faiss (same hot/warm rows)" if args.hot_frac >= 1 else
            f"steady state, hot budget {args.hot_frac:g} x N; raw faiss places each row once in its final tier")
    (out / f"admission_bench{tag}.md").write_text(
        f"# Admission ingest vs raw faiss (same run)\n\nN={args.n} x d={D}, batch {args.batch}, medians of "
        f"{args.repeats}: pipeline {args.n / p:.0f} vec/s, {what} {args.n / r:.0f} vec/s, "
        f"ratio {r / p:.2f}x (target >= 0.8x with room in hot). Hot {info['hot']}, warm {info['warm']}, "
        f"dropped {info['dropped']}; demotions {info['demotions']}, hot graph rebuilds {info['hot_rebuilds']}, "
        f"recall@10 of the memory vs exact over its live items {info['recall_at_10']:.3f}; "
        f"warm trainings {info['warm_trainings']} (retrain_mode {info['retrain_mode']}, "
        f"{info['retrain_ms']} ms retraining, of which {info['retrain_encode_ms']} ms re-encoding)"
        + (f" (in a worker process; installs that waited {info['retrain_waits']}, {info['retrain_wait_ms']} ms)"
           if args.background else "") + ".\n")
    return res


if __name__ == "__main__":
    main()
