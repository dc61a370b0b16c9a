"""SeenIds (the replay rule's exact id set) per-batch cost over a long stream, against a Python
``set`` measured in the same run: ``first_arrivals`` of 1024-id batches (2% replays of earlier
ids), median ms per batch over the first and last 5% of the stream.

Usage: python bench/bench_seen_ids.py [--events 1048576] [--batch 1024]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from luma_pl.stream.pool import SeenIds  # noqa: E402
from luma_pl.threads import limit_cpu_threads  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1 << 20)
    p.add_argument("--batch", type=int, default=1024)
    args = p.parse_args()
    limit_cpu_threads()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 2**62, args.events)
    nb = args.events // args.batch
    for b in range(1, nb):  # 2% of each batch replays ids of earlier batches
        k = args.batch // 50
        ids[b * args.batch: b * args.batch + k] = ids[rng.integers(0, b * args.batch, k)]
    seen, py = SeenIds(), set()
    t_ours, t_set, fresh_ours, fresh_set = [], [], 0, 0
    for b in range(nb):
        x = ids[b * args.batch:(b + 1) * args.batch]
        t = time.perf_counter()
        fresh_ours += int(seen.first_arrivals(x).sum())
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        new = []
        for v in x.tolist():
            if v not in py:
                py.add(v)
                new.append(v)
        fresh_set += len(new)
        t_set.append(time.perf_counter() - t)
    assert fresh_ours == fresh_set == len(py) == len(seen)
    w = max(1, nb // 20)
    rows = [("SeenIds (sorted runs)", t_ours), ("python set", t_set)]
    print(f"{args.events:,} ids in batches of {args.batch}; {fresh_ours:,} first arrivals")
    print("| structure | first 5% ms/batch | last 5% ms/batch | last / first |\n|---|---|---|---|")
    for name, t in rows:
        a, z = np.median(t[:w]) * 1e3, np.median(t[-w:]) * 1e3
        print(f"| {name} | {a:.3f} | {z:.3f} | {z / a:.2f} |")
    print(f"SeenIds / set at the end: {np.median(t_ours[-w:]) / np.median(t_set[-w:]):.2f}x the time; "
          f"memory 8 B/id vs ~{sys.getsizeof(py) / len(py) + 32:.0f} B/id for the set")


if __name__ == "__main__":
    main()
