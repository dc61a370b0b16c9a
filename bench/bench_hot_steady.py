"""The hot tier at steady state: full, every arrival evicting the oldest live item, side by side in one run.

Stream: N drifting 512-d unit vectors (``bench_admission.stream``) in batches of ``--batch``; the hot
tier holds H = ``--hot-frac`` x N live items, and once full each batch first removes its size in the
oldest live items (FIFO), then inserts. One thread everywhere. Engines:

* ``luma segmented``: ``luma_pl.memory.HotTier`` as ``TieredMemory`` builds it from ``MemoryConfig``
  (mutable exact segment + sealed HNSW segments, tombstones, whole-segment drops, compaction);
* ``luma flat``: the same tier with the 'flat' backend (one exact segment, never sealed);
* ``faiss HNSW + tombstones + rebuilds``: the previous design (one graph, rebuilt from its live rows
  once tombstones pass 20%), by hand on raw faiss;
* ``hnswlib`` (``mark_deleted`` + ``replace_deleted``) and ``usearch`` (native ``remove``): peers with
  deletes, installed in their own folder (``make bench-peers``; skipped when absent);
* ``faiss flat IDMap`` (exact, ``remove_ids``);
* ``faiss HNSW static``: one graph built once on the final live items (no churn): its build rate and
  query latency are the baselines the targets refer to.

Reported per engine: ingest vec/s (CPU time, and wall), query p50/p99 (single queries) and batched
ms/query (batches of 64), recall@10 against exact search over the live items, RAM bytes per live
item, and rebuilds / seals / compactions where the engine has them. Ratios are against the static
faiss build measured in the same run.

    python bench/bench_hot_steady.py [--n 40000] [--hot-frac 0.1] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.append(str(ROOT / ".bench-peers"))  # peers last: the project's numpy stays first

from bench_admission import stream  # noqa: E402

from luma_pl.memory import HotTier, MemoryConfig  # noqa: E402
from luma_pl.memory.tiered import ITEM_BOOKKEEPING_BYTES  # noqa: E402
from luma_pl.threads import limit_cpu_threads  # noqa: E402

D = 512
K = 10


class LumaHot:
    def __init__(self, h: int, backend: str, **overrides):
        cfg = MemoryConfig(dim=D, hot_max_items=h, hot_max_bytes=1 << 40, hot_backend=backend, **overrides)
        self.name = f"luma {'segmented' if backend == 'hnsw' else 'flat'}" + "".join(
            f" {k}={v}" for k, v in overrides.items())
        self.hot = HotTier(D, backend, cfg.hnsw_m, cfg.ef_construction, cfg.ef_search, cfg.tombstone_fraction,
                           item_bytes=0, seal_rows=cfg.resolved_seal_rows(),
                           segment_rows=cfg.resolved_segment_rows(), max_rows=h, ef_share=cfg.hot_ef_share)

    def add(self, ids, x):
        self.hot.add(ids, x)

    def remove(self, ids):
        self.hot.remove(ids)

    def search(self, q, k):
        return self.hot.search(q, k)[1]

    def nbytes(self):
        return self.hot.nbytes()

    def info(self):
        h = self.hot
        return {"seals": h.seals, "compactions": h.compactions, "segment_drops": h.drops,
                "segments": len(h.segments), "mutable_rows": h.mutable_rows}


class FaissTombstoneHNSW:
    """The previous design: one faiss HNSW graph, tombstones filtered, rebuilt at 20% tombstones."""

    name = "faiss HNSW + tombstones + rebuilds"

    def __init__(self, h: int, frac: float = 0.2):
        self.frac = frac
        self.rebuilds = 0
        self._reset(np.empty(0, np.int64), np.empty((0, D), np.float32))

    def _reset(self, ids, x):
        self.index = faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction, self.index.hnsw.efSearch = 80, 64
        self.ids, self.live, self.row = np.empty(0, np.int64), np.empty(0, bool), {}
        if len(ids):
            self.add(ids, x)

    def add(self, ids, x):
        start = len(self.ids)
        self.index.add(x)
        self.ids = np.concatenate([self.ids, ids])
        self.live = np.concatenate([self.live, np.ones(len(ids), bool)])
        self.row.update(zip(ids.tolist(), range(start, start + len(ids)), strict=True))
        self.bitmap = None

    def remove(self, ids):
        self.live[[self.row.pop(i) for i in ids.tolist()]] = False
        self.bitmap = None
        if (~self.live).sum() > self.frac * len(self.live):
            keep = np.flatnonzero(self.live)
            xb = faiss.rev_swig_ptr(faiss.downcast_index(self.index.storage).get_xb(), len(self.ids) * D)
            x = np.array(xb.reshape(-1, D)[keep])
            self._reset(self.ids[keep], x)
            self.rebuilds += 1

    def search(self, q, k):
        if self.bitmap is None:
            self.bitmap = np.packbits(self.live, bitorder="little")
        sel = faiss.IDSelectorBitmap(len(self.live), faiss.swig_ptr(self.bitmap))
        _, i = self.index.search(q, k, params=faiss.SearchParametersHNSW(sel=sel, efSearch=64))
        return np.where(i >= 0, self.ids[np.maximum(i, 0)], -1)

    def nbytes(self):
        h = self.index.hnsw
        return len(self.ids) * (D * 4 + 9) + h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4

    def info(self):
        return {"rebuilds": self.rebuilds}


class FaissFlat:
    name = "faiss flat IDMap (exact)"

    def __init__(self, h: int):
        self.index = faiss.IndexIDMap(faiss.IndexFlatIP(D))

    def add(self, ids, x):
        self.index.add_with_ids(x, ids)

    def remove(self, ids):
        self.index.remove_ids(faiss.IDSelectorBatch(ids))

    def search(self, q, k):
        return self.index.search(q, k)[1]

    def nbytes(self):
        return self.index.ntotal * (D * 4 + 8)

    def info(self):
        return {}


class Hnswlib:
    name = "hnswlib (mark_deleted + replace)"

    def __init__(self, h: int):
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=D)
        self.index.init_index(max_elements=h + 1024, M=32, ef_construction=80, allow_replace_deleted=True)
        self.index.set_ef(64)
        self.index.set_num_threads(1)

    def add(self, ids, x):
        self.index.add_items(x, ids, replace_deleted=True, num_threads=1)

    def remove(self, ids):
        for i in ids.tolist():
            self.index.mark_deleted(i)

    def search(self, q, k):
        return self.index.knn_query(q, k, num_threads=1)[0].astype(np.int64)

    def nbytes(self):
        return self.index.index_file_size()

    def info(self):
        return {}


class Usearch:
    name = "usearch (native remove)"

    def __init__(self, h: int):
        from usearch.index import Index

        self.index = Index(ndim=D, metric="ip", dtype="f32", connectivity=32, expansion_add=80,
                           expansion_search=64)

    def add(self, ids, x):
        self.index.add(ids, x, threads=1)

    def remove(self, ids):
        self.index.remove(ids)

    def search(self, q, k):
        return np.asarray(self.index.search(q, k, threads=1).keys, dtype=np.int64).reshape(len(q), k)

    def nbytes(self):
        return int(self.index.memory_usage)

    def info(self):
        return {}


def run_engine(engine, x: np.ndarray, h: int, batch: int) -> dict:
    """Feed the stream FIFO (the oldest live items leave first) and time it."""
    c0, w0 = time.process_time(), time.perf_counter()
    oldest = 0
    for s in range(0, len(x), batch):
        ids = np.arange(s, min(len(x), s + batch), dtype=np.int64)
        over = s + len(ids) - oldest - h
        if over > 0:
            engine.remove(np.arange(oldest, oldest + over, dtype=np.int64))
            oldest += over
        engine.add(ids, np.ascontiguousarray(x[ids]))
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return {"ingest_cpu_s": cpu, "ingest_wall_s": wall, "live_from": oldest}


def query_stats(search, q: np.ndarray, truth: np.ndarray) -> dict:
    lat = []
    found = []
    for i in range(len(q)):
        t = time.perf_counter()
        r = search(q[i:i + 1], K)
        lat.append(time.perf_counter() - t)
        found.append(r[0])
    t = time.perf_counter()
    for s in range(0, len(q), 64):
        search(q[s:s + 64], K)
    batched = (time.perf_counter() - t) / len(q)
    recall = float(np.mean([len(set(f.tolist()) & set(g.tolist())) / K for f, g in zip(found, truth, strict=True)]))
    return {"query_p50_ms": 1e3 * float(np.median(lat)), "query_p99_ms": 1e3 * float(np.quantile(lat, 0.99)),
            "query_batched_ms": 1e3 * batched, "recall_at_10": recall}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40_000)
    ap.add_argument("--hot-frac", dest="hot_frac", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--engines", default="all", help="comma-separated subset of: segmented,flat,tombstone,"
                    "hnswlib,usearch,faiss_flat (static faiss always runs)")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra luma segmented run with MemoryConfig overrides, e.g. hot_seal_rows=512")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    limit_cpu_threads()
    h = int(args.hot_frac * args.n)
    x = stream(args.n + args.queries)
    q, x = x[args.n:], x[: args.n]
    makers = {"segmented": lambda: LumaHot(h, "hnsw"), "flat": lambda: LumaHot(h, "flat"),
              "tombstone": lambda: FaissTombstoneHNSW(h), "hnswlib": lambda: Hnswlib(h),
              "usearch": lambda: Usearch(h), "faiss_flat": lambda: FaissFlat(h)}
    chosen = list(makers) if args.engines == "all" else args.engines.split(",")
    for spec in args.variant:  # e.g. hot_seal_rows=512,hot_segment_rows=2000
        kw = {k: (v == "True") if isinstance(getattr(MemoryConfig, k), bool) else type(getattr(MemoryConfig, k))(v)
              for k, v in (p.split("=") for p in spec.split(","))}
        makers[spec] = lambda kw=kw: LumaHot(h, "hnsw", **kw)
        chosen.append(spec)
    live = np.arange(args.n - h, args.n)
    truth = np.argsort(-(q @ x[live].T), axis=1)[:, :K] + live[0]
    rows = []
    # the baseline: one static graph of the final live items
    static = faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT)
    static.hnsw.efConstruction, static.hnsw.efSearch = 80, 64
    c0 = time.process_time()
    static.add(np.ascontiguousarray(x[live]))
    build = time.process_time() - c0

    def static_search(qq, k):
        return static.search(qq, k)[1] + live[0]

    base = {"engine": "faiss HNSW static (final live items, no churn)", "ingest_vec_per_s_cpu": h / build,
            **query_stats(static_search, q, truth), "bytes_per_item": (len(faiss.serialize_index(static)) + 8 * h) / h}
    rows.append(base)
    for name in chosen:
        try:
            engine = makers[name]()
        except ImportError as err:
            print(f"skipping {name}: {err} (run `make bench-peers`)", file=sys.stderr)
            continue
        r = run_engine(engine, x, h, args.batch)
        assert r["live_from"] == live[0]
        row = {"engine": engine.name, "ingest_vec_per_s_cpu": args.n / r["ingest_cpu_s"],
               "ingest_vec_per_s_wall": args.n / r["ingest_wall_s"], **query_stats(engine.search, q, truth),
               "bytes_per_item": engine.nbytes() / h, **engine.info()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for r in rows:
        r["ingest_vs_static_build"] = r["ingest_vec_per_s_cpu"] / base["ingest_vec_per_s_cpu"]
        r["query_p50_vs_static"] = r["query_p50_ms"] / base["query_p50_ms"]
        r["query_batched_vs_static"] = r["query_batched_ms"] / base["query_batched_ms"]
    res = {"n": args.n, "hot_items": h, "d": D, "batch": args.batch, "queries": args.queries,
           "bookkeeping_bytes_per_item_in_memory": ITEM_BOOKKEEPING_BYTES, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"hot_steady_n{args.n}.json").write_text(json.dumps(res, indent=1))
    lines = [f"# Hot tier at steady state, one run (N={args.n}, hot {h} live items FIFO, d={D}, batch "
             f"{args.batch}, one thread)\n",
             "| engine | ingest vec/s (CPU) | vs static build | query p50 ms | p99 ms | batched ms/q | p50 vs static "
             "| batched vs static | recall@10 live | bytes/item | events |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ev = ", ".join(f"{k} {r[k]}" for k in ("rebuilds", "seals", "compactions", "segment_drops", "segments")
                       if k in r)
        lines.append(f"| {r['engine']} | {r['ingest_vec_per_s_cpu']:.0f} | {r['ingest_vs_static_build']:.2f}x | "
                     f"{r['query_p50_ms']:.3f} | {r['query_p99_ms']:.3f} | {r['query_batched_ms']:.3f} | "
                     f"{r['query_p50_vs_static']:.2f}x | {r['query_batched_vs_static']:.2f}x | "
                     f"{r['recall_at_10']:.3f} | {r['bytes_per_item']:.0f} | {ev} |")
    text = "\n".join(lines) + "\n\n    python bench/bench_hot_steady.py " + " ".join(argv or sys.argv[1:]) + "\n"
    (out / f"hot_steady_n{args.n}.md").write_text(text)
    print(text)
    return res


if __name__ == "__main__":
    main()
