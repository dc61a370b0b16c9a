"""Overhead of the Safe@k certificate per query batch, next to the search it certifies.

    LUMA_NUM_THREADS=1 .venv/bin/python bench/bench_safe_at_k.py [--batch 256] [--reps 15]

Same run, same memory (demo items: 500 hot exact + warm IVFPQ), same bridged queries: median
seconds of ``TieredMemory.search`` (C = 20 candidates, PQ scores and rescored) vs the certificate
(``certify_search``: candidate vectors from the memory + the batched pairwise bound) and vs the
functional core alone (vectors already in hand). Writes bench/results/safe_at_k_bench.json.
"""

# ruff: noqa: B023  (the timed lambdas run inside the loop iteration that defines them)
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from luma_pl.bridge import ProcrustesConfig, StreamingProcrustes  # noqa: E402
from luma_pl.corpus import DemoCorpusConfig, build_demo_corpus  # noqa: E402
from luma_pl.memory import MemoryConfig, TieredMemory  # noqa: E402
from luma_pl.telemetry import bridge_queries, certify, certify_search  # noqa: E402
from luma_pl.telemetry.safe_at_k import MEMORY_ITEM_NORM, candidate_vectors  # noqa: E402
from luma_pl.threads import limit_cpu_threads  # noqa: E402


def median_s(fn, reps):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=20)
    args = ap.parse_args()
    limit_cpu_threads()
    corpus = build_demo_corpus(DemoCorpusConfig())
    S, Cn, Aq = corpus.emb["wordllama"], corpus.emb["minilm"], corpus.emb["query_wordllama"]
    bridge = StreamingProcrustes(ProcrustesConfig(d_s=S.shape[1], d_c=Cn.shape[1], refresh_every=0))
    bridge.fit_step(torch.from_numpy(S), torch.from_numpy(Cn))
    bridge.refresh()
    mem = TieredMemory(MemoryConfig(dim=Cn.shape[1], hot_max_items=500, nlist=8, pq_m=384, pq_nbits=5, nprobe=8))
    mem.insert(np.arange(len(Cn)), Cn)
    q, _, _ = bridge_queries(bridge, torch.from_numpy(Aq[: args.batch]))
    qn = q.numpy().astype(np.float32)
    eps = torch.full((len(qn),), 1e-3, dtype=torch.float64)
    k, C = args.k, args.candidates
    out = {"batch": args.batch, "k": k, "candidates": C, "reps": args.reps, "threads": torch.get_num_threads()}
    for name, rescore in (("pq", False), ("rescored", True)):
        res = mem.search(qn, C, rescore=rescore, record_hits=False)
        x, _ = candidate_vectors(mem, res.ids, approximate=not rescore)
        xv = torch.from_numpy(x)
        sc, z, valid = torch.from_numpy(res.scores), torch.from_numpy(res.zeta), torch.from_numpy(res.ids >= 0)
        t_search = median_s(lambda: mem.search(qn, C, rescore=rescore, record_hits=False), args.reps)
        t_cert = median_s(lambda: certify_search(res, k, eps, mem, rescored=rescore), args.reps)
        t_core = median_s(lambda: certify(sc, z, res.zeta_max, eps, k, vectors=xv, vectors_exact=rescore,
                                          valid=valid, item_norm=MEMORY_ITEM_NORM), args.reps)
        t_cap = median_s(lambda: certify_search(res, k, eps, mem, rescored=rescore, distances="cap"), args.reps)
        out[name] = {"search_s": t_search, "certify_search_s": t_cert, "core_s": t_core, "no_vectors_s": t_cap,
                     "ratio_certify_to_search": t_cert / t_search, "ratio_core_to_search": t_core / t_search,
                     "per_query_us_certify": 1e6 * t_cert / len(qn)}
    os.makedirs("bench/results", exist_ok=True)
    with open("bench/results/safe_at_k_bench.json", "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
