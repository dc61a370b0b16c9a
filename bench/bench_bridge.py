"""Streaming Procrustes cost next to raw torch, measured in the same run (medians).

accumulation: StreamingProcrustes.fit_step on float32 (B, d) batches vs a raw float64
  ``torch.addmm(M, c.T, s)`` on pre-converted inputs (the irreducible GEMM);
refresh: StreamingProcrustes.refresh() (sync + SVD + U V^T + bookkeeping) vs a raw
  ``torch.linalg.svd`` of the same d x d float64 matrix.

Usage: python bench/bench_bridge.py [--dims 512 1024] [--batch 256] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from luma_pl.bridge import StreamingProcrustes
from luma_pl.threads import limit_cpu_threads


def _median_s(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def run(d: int, batch: int, reps: int) -> dict:
    g = torch.Generator().manual_seed(d)
    s = torch.nn.functional.normalize(torch.randn(batch, d, generator=g), dim=-1)  # (B, d) float32
    c = torch.nn.functional.normalize(torch.randn(batch, d, generator=g), dim=-1)
    br = StreamingProcrustes(d_s=d, d_c=d, refresh_every=0, lam=0.999)
    t_fit = _median_s(lambda: br.fit_step(s, c), reps * 4)
    M = torch.zeros(d, d, dtype=torch.float64)
    c64, s64 = c.double(), s.double()
    t_addmm = _median_s(lambda: torch.addmm(M, c64.T, s64, beta=0.999, out=M), reps * 4)
    t_refresh = _median_s(br.refresh, reps)
    M_full = br.total_M.clone()
    t_svd = _median_s(lambda: torch.linalg.svd(M_full, full_matrices=False), reps)
    return {"d": d, "fit_pairs_s": batch / t_fit, "addmm_pairs_s": batch / t_addmm,
            "refresh_ms": 1e3 * t_refresh, "svd_ms": 1e3 * t_svd}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    n = limit_cpu_threads()
    print(f"threads={n} batch={args.batch} reps={args.reps} torch={torch.__version__}")
    print(f"{'d':>5} {'fit_step pairs/s':>17} {'raw addmm pairs/s':>18} {'ratio':>6} "
          f"{'refresh ms':>11} {'raw svd ms':>11} {'ratio':>6}")
    for d in args.dims:
        r = run(d, args.batch, args.reps)
        print(f"{r['d']:>5} {r['fit_pairs_s']:>17.0f} {r['addmm_pairs_s']:>18.0f} "
              f"{r['addmm_pairs_s'] / r['fit_pairs_s']:>6.2f} {r['refresh_ms']:>11.1f} {r['svd_ms']:>11.1f} "
              f"{r['refresh_ms'] / r['svd_ms']:>6.2f}")
    print("ratio = ours / raw time (1.00 = no overhead over the raw torch op)")


if __name__ == "__main__":
    main()
