"""``make bench``: run every benchmark once at its default (CI-machine) size and collect one results file.

Each benchmark prints its own medians and ratios against raw faiss / raw torch measured in the same
run; this runner only sequences them (never two at once: on a 2-core machine concurrent runs
distort each other's timings), records wall time and exit status, and writes
``bench/results/bench_all.md`` with every benchmark's printed output. The 1M-vector memory run and
the soak run are long and are not part of this suite: see bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = [
    ("replay throughput (issue 2)", ["bench/bench_replay.py"]),
    ("bridge accumulate / refresh (issue 3)", ["bench/bench_bridge.py"]),
    ("bridge quality on the demo corpus (issue 3)", ["bench/bridge_quality.py"]),
    ("tiered memory at N=100k (issue 4)", ["bench/bench_memory.py", "--n", "100000", "--tmp", "/tmp"]),
    ("admission ingest (issue 5)", ["bench/bench_admission.py"]),
    ("admission ingest, full hot tier (issue 5)", ["bench/bench_admission.py", "--n", "40000", "--repeats", "1",
                                                   "--hot-frac", "0.1"]),
    ("admission ingest, full hot tier, background retraining", ["bench/bench_admission.py", "--n", "40000",
                                                                "--repeats", "1", "--hot-frac", "0.1",
                                                                "--background-retrain"]),
    ("admission ablation (issue 5)", ["bench/admission_ablation.py"]),
    ("admission ablation, skewed stream (issue 5)", ["bench/admission_ablation.py", "--popularity", "zipf", "--seeds", "8"]),
    ("Safe@k overhead (issue 6)", ["bench/bench_safe_at_k.py"]),
    ("Safe@k on the demo stream (issue 6)", ["bench/safe_at_k_report.py"]),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="substrings of benchmark names to run")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_all.md"))
    args = ap.parse_args(argv)
    env = dict(os.environ, LUMA_NUM_THREADS=os.environ.get("LUMA_NUM_THREADS", "1"), PYTHONPATH=str(ROOT))
    lines = ["# luma-pl benchmark suite", "", f"python {sys.version.split()[0]}, LUMA_NUM_THREADS={env['LUMA_NUM_THREADS']}",
             f"started {time.strftime('%Y-%m-%d %H:%M:%S')}", ""]
    failed = 0
    for name, cmd in SUITE:
        if args.only and not any(s in name for s in args.only):
            continue
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        out = proc.stdout.strip()
        print(out[-4000:], flush=True)
        if proc.returncode:
            failed += 1
            print(proc.stderr[-3000:], file=sys.stderr)
        lines += [f"## {name}", "", f"`python {' '.join(cmd)}` — exit {proc.returncode}, {wall:.0f} s", "",
                  "```", out[-12000:] if out else proc.stderr[-3000:], "```", ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"\nwrote {args.out}; {failed} benchmark(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
