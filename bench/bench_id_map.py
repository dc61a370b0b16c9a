"""IdMap vs the dict it replaced in TieredMemory (id -> key for every id ever admitted).

Streams N ids in batches of B (assign, then look up the batch and B earlier ids, as insert does),
and reports, measured in this run: bytes per id (tracemalloc, both structures), and the median
per-batch time of IdMap relative to the dict. Usage: python bench/bench_id_map.py [N] [B]
"""

from __future__ import annotations

import itertools
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from luma_pl.memory.id_map import IdMap  # noqa: E402


def run(kind: str, ids: np.ndarray, B: int, rng) -> tuple[float, list[float]]:
    tracemalloc.start()
    m: dict | IdMap = {} if kind == "dict" else IdMap()
    times = []
    for i in range(0, len(ids), B):
        batch, keys = ids[i:i + B], np.arange(i, i + min(B, len(ids) - i))
        probe = np.concatenate([batch, ids[rng.integers(0, i + 1, B)]])
        t = time.perf_counter()
        if kind == "dict":
            m.update(zip(batch.tolist(), keys.tolist(), strict=True))
            np.fromiter(map(m.get, probe.tolist(), itertools.repeat(-1)), np.int64, count=len(probe))
        else:
            m.assign(batch, keys)
            m.lookup(probe)
        times.append(time.perf_counter() - t)
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return size / len(ids), times


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    B = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1 << 62, n)
    d_bytes, d_t = run("dict", ids, B, np.random.default_rng(1))
    m_bytes, m_t = run("idmap", ids, B, np.random.default_rng(1))
    print(f"{n} ids in batches of {B}")
    print(f"bytes per id: dict {d_bytes:.0f}, IdMap {m_bytes:.0f} ({m_bytes / d_bytes:.2f}x)")
    print(f"median batch time IdMap / dict: {np.median(m_t) / np.median(d_t):.2f}x; "
          f"p99 {np.percentile(m_t, 99) / np.percentile(d_t, 99):.2f}x; total {sum(m_t) / sum(d_t):.2f}x")


if __name__ == "__main__":
    main()
