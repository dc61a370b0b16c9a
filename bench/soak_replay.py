"""Soak run of the streaming replay (issue 8, "Load"): >= 1M events through the safe shard reader,
the admission pipeline and a budgeted TieredMemory, with queries between the batches.

Not a test (minutes, not seconds): ``nice -n 10 python bench/soak_replay.py`` writes
``bench/results/soak_<events>.json`` and ``.md``. What it shows:

* **RAM**: RSS sampled from ``/proc/self/status`` (VmRSS, RssAnon, RssFile; no psutil) every
  ``--sample-every`` events, against a declared budget = RSS after start-up (interpreter, torch,
  faiss, the reader) + the memory's hot and warm byte budgets + the bookkeeping the memory keeps for
  every id it ever admitted (``ITEM_BOOKKEEPING_BYTES`` per id; docs/design.md section 4: evicted ids stay known) +
  a fixed slack for one replay batch and the query pool. The budget is stated before the run and
  the run fails (exit 1) if any sample exceeds it.
* **Latency**: per-query search time (k=10, rescored) in the first and the last 5% of the stream,
  with the warm tier's size at both points (IVF search cost scales with the probed lists' length,
  so a flat latency is not expected; the ratio is reported next to the warm size ratio).
* **Accounting**: events read = events skipped by the reader (counted) + arrivals; arrivals =
  prefilter drops + inserted; inserted = hot + warm + buffer + evicted (``memory.audit()``); the
  keys of the replayed events are checked to be exactly 0..N-1 once each (no duplicate, no gap).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from luma_pl.threads import limit_cpu_threads  # noqa: E402

limit_cpu_threads()

from data_modules import ReaderConfig, ReplayConfig, StreamReplayDataset, write_blocks  # noqa: E402
from luma_pl.admission.pipeline import AdmissionConfig, AdmissionPipeline  # noqa: E402
from luma_pl.memory import MemoryConfig, TieredMemory  # noqa: E402
from luma_pl.memory.tiered import ITEM_BOOKKEEPING_BYTES  # noqa: E402


def proc_status() -> dict[str, int]:
    """VmRSS / RssAnon / RssFile / VmHWM in bytes, read from /proc/self/status."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[name] = int(rest.split()[0]) * 1024
    return out


def make_shards(folder: Path, n: int, d: int, clusters: int, seed: int) -> float:
    """Synthetic clustered unit vectors as block shards (written in slices to bound RAM)."""
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    keys_all, ts_all, parts = [], [], []
    step = 1 << 17
    for i in range(0, n, step):
        j = min(i + step, n)
        lab = rng.zipf(1.3, j - i) % clusters  # skewed topic popularity (heavy hitters exist)
        x = centres[lab] + 0.6 * rng.standard_normal((j - i, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        parts.append(x.astype(np.float32))
        keys_all += [f"{k:08d}" for k in range(i, j)]
        ts_all.append(np.arange(i, j, dtype=np.int64))
    write_blocks(folder, keys=keys_all, ts=np.concatenate(ts_all), emb={"x": np.concatenate(parts)},
                 block_events=1024, events_per_shard=65536)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=1_048_576)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--queries-per-batch", type=int, default=8)
    p.add_argument("--sample-every", type=int, default=16384, help="events between two RSS samples")
    p.add_argument("--hot-mb", type=float, default=4)
    p.add_argument("--warm-mb", type=float, default=32)
    p.add_argument("--warm-items", type=int, default=400_000)
    p.add_argument("--slack-mb", type=float, default=64, help="one batch, the query pool, allocator slack")
    p.add_argument("--work", default=None, help="shard + originals folder (default: a temp dir)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = p.parse_args(argv)

    work = Path(a.work or tempfile.mkdtemp(prefix="luma_soak_"))
    shards = work / "shards"
    gen_s = 0.0
    if not (shards / "manifest.json").exists():
        gen_s = make_shards(shards, a.events, a.dim, clusters=512, seed=0)
    mcfg = MemoryConfig(dim=a.dim, hot_max_items=50_000, hot_max_bytes=int(a.hot_mb * 2**20),
                        warm_max_items=a.warm_items, warm_max_bytes=int(a.warm_mb * 2**20), pq_m=16, pq_nbits=8,
                        hnsw_m=16, ef_construction=40, ef_search=32, originals_sync_rows=65536)
    acfg = AdmissionConfig.from_dict({"mode": "items", "prefilter": {"basis": "random", "threshold_mode": "quantile",
                                                                     "alpha": 0.05},
                                      "cluster": {"m": 64}, "counter": {"policy": "space_saving", "capacity": 16}})
    shutil.rmtree(work / "originals", ignore_errors=True)  # a fresh memory (shards are reused)
    memory = TieredMemory(mcfg, directory=str(work / "originals"))
    admission = AdmissionPipeline(acfg, dim=a.dim)
    ds = StreamReplayDataset(ReplayConfig(root=str(shards), batch_size=a.batch, reader=ReaderConfig(decode_media=False)))
    n_planned = ds.manifest.total_events

    base = proc_status()["VmRSS"]
    budget = (base + mcfg.hot_max_bytes + mcfg.warm_max_bytes + n_planned * ITEM_BOOKKEEPING_BYTES
              + int(a.slack_mb * 2**20))
    print(f"soak: {n_planned} events d={a.dim}; RSS after start-up {base / 2**20:.1f} MiB; "
          f"budget {budget / 2**20:.1f} MiB (hot {a.hot_mb} + warm {a.warm_mb} MiB + bookkeeping "
          f"{n_planned * ITEM_BOOKKEEPING_BYTES / 2**20:.1f} MiB + slack {a.slack_mb} MiB)", flush=True)

    rng = np.random.default_rng(1)
    seen = np.zeros(n_planned, np.int32)  # times each key was replayed
    samples, lat = [], []  # (events, VmRSS, RssAnon, RssFile, hot_bytes, warm_bytes), (events, s/query, warm n)
    events = skipped = batches = 0
    pool = np.empty((0, a.dim), np.float32)
    next_sample = 0
    t0 = time.perf_counter()
    ingest_s = 0.0
    for batch in ds:
        batches += 1
        skipped += batch["skipped"]
        b = len(batch["key"])
        if b == 0:
            continue
        idx = np.fromiter((int(k) for k in batch["key"]), np.int64, count=b)
        np.add.at(seen, idx, 1)
        x = batch["emb"]["x"].numpy()
        t = time.perf_counter()
        admission.ingest_items(memory, idx, x)
        ingest_s += time.perf_counter() - t
        events += b
        # queries: noisy copies of earlier events (retention) and of this batch
        pool = x[rng.integers(0, b, 64)] if not len(pool) else np.concatenate([pool[-4096:], x[rng.integers(0, b, 64)]])
        q = pool[rng.integers(0, len(pool), a.queries_per_batch)] + 0.05 * rng.standard_normal(
            (a.queries_per_batch, a.dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        t = time.perf_counter()
        memory.search(q, 10, record_hits=True)
        lat.append((events, (time.perf_counter() - t) / len(q), memory.warm.ivf_count + len(memory.warm.buf_ids)))
        if events >= next_sample:
            st = proc_status()
            by = memory.bytes_by_tier()
            samples.append((events, st["VmRSS"], st["RssAnon"], st["RssFile"], by["hot"], by["warm"]))
            next_sample += a.sample_every
            if len(samples) % 16 == 1:
                print(f"  {events:>9} events  {time.perf_counter() - t0:7.1f} s  RSS {st['VmRSS'] / 2**20:7.1f} MiB  "
                      f"hot {len(memory.hot)} warm {memory.warm.ivf_count} buffer {len(memory.warm.buf_ids)}  "
                      f"evicted {memory.stats()['evicted']}  q {lat[-1][1] * 1e3:.2f} ms", flush=True)
    wall = time.perf_counter() - t0
    st = proc_status()
    by = memory.bytes_by_tier()
    samples.append((events, st["VmRSS"], st["RssAnon"], st["RssFile"], by["hot"], by["warm"]))
    counts = memory.audit()
    s = memory.stats()
    ad = admission.stats

    # accounting
    read = events + 0  # events delivered by the reader
    acc = {
        "events_planned": n_planned, "events_replayed": int(read), "reader_skips": int(skipped),
        "keys_once": int((seen == 1).sum()), "keys_missing": int((seen == 0).sum()), "keys_duplicated": int((seen > 1).sum()),
        "arrivals": ad["arrivals"], "dropped": ad["dropped"], "inserted": s["inserted"],
        "hot": counts["hot"], "warm": counts["warm"], "buffer": counts["buffer"], "evicted": counts["evicted"],
    }
    acc["balanced"] = bool(acc["arrivals"] == read and acc["dropped"] + acc["inserted"] == read
                           and acc["hot"] + acc["warm"] + acc["buffer"] + acc["evicted"] == acc["inserted"]
                           and acc["keys_once"] == n_planned)
    rss = np.array([r[1] for r in samples])
    n5 = max(1, len(lat) // 20)
    lat_a = np.array([r[1] for r in lat])
    warm_start = float(np.mean([r[2] for r in lat[:n5]]))
    warm_end = float(np.mean([r[2] for r in lat[-n5:]]))
    result = {
        "events": int(read), "dim": a.dim, "batch": a.batch, "batches": batches, "queries": len(lat) * a.queries_per_batch,
        "generate_s": round(gen_s, 1), "wall_s": round(wall, 1), "events_per_s": round(read / wall, 1),
        "ingest_events_per_s": round(read / ingest_s, 1),
        "rss_startup_mib": round(base / 2**20, 1), "budget_mib": round(budget / 2**20, 1),
        "peak_rss_mib": round(float(rss.max()) / 2**20, 1), "vm_hwm_mib": round(st["VmHWM"] / 2**20, 1),
        "peak_rss_anon_mib": round(max(r[2] for r in samples) / 2**20, 1),
        "peak_rss_file_mib": round(max(r[3] for r in samples) / 2**20, 1),
        "rss_samples": len(samples), "rss_over_budget_samples": int((rss > budget).sum()),
        "hot_bytes_max": max(r[4] for r in samples), "hot_budget": mcfg.hot_max_bytes,
        "warm_bytes_max": max(r[5] for r in samples), "warm_budget": mcfg.warm_max_bytes,
        "latency_start_ms": round(float(np.median(lat_a[:n5])) * 1e3, 3),
        "latency_end_ms": round(float(np.median(lat_a[-n5:])) * 1e3, 3),
        "latency_p99_start_ms": round(float(np.quantile(lat_a[:n5], 0.99)) * 1e3, 3),
        "latency_p99_end_ms": round(float(np.quantile(lat_a[-n5:], 0.99)) * 1e3, 3),
        "warm_items_start": round(warm_start), "warm_items_end": round(warm_end),
        "memory_stats": {k: (float(v) if isinstance(v, float) else int(v)) for k, v in s.items()},
        "accounting": acc,
        "config": {"memory": mcfg.to_dict(), "admission": acfg.to_dict()},
        "rss_series": [[int(r[0]), round(r[1] / 2**20, 1), round(r[2] / 2**20, 1), round(r[3] / 2**20, 1)] for r in samples],
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"soak_{read}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))
    memory.close()
    ok = result["rss_over_budget_samples"] == 0 and acc["balanced"]
    return 0 if ok else 1


def _markdown(r: dict) -> str:
    acc = r["accounting"]
    return "\n".join([
        f"# Soak run: {r['events']:,} events (d={r['dim']}) through reader + admission + TieredMemory",
        "",
        f"Command: `nice -n 10 python bench/soak_replay.py` (1 thread, 2 shared cores). "
        f"Wall {r['wall_s']} s ({r['events_per_s']:,} events/s incl. {r['queries']:,} queries; "
        f"ingest alone {r['ingest_events_per_s']:,} events/s); shards generated in {r['generate_s']} s.",
        "",
        "| figure | value |", "| --- | --- |",
        f"| RSS after start-up | {r['rss_startup_mib']} MiB |",
        f"| declared budget (start-up + hot + warm + per-id bookkeeping + slack) | {r['budget_mib']} MiB |",
        f"| peak sampled RSS ({r['rss_samples']} samples) | {r['peak_rss_mib']} MiB "
        f"(anon {r['peak_rss_anon_mib']}, file-backed {r['peak_rss_file_mib']}) |",
        f"| VmHWM at the end | {r['vm_hwm_mib']} MiB |",
        f"| samples over budget | {r['rss_over_budget_samples']} |",
        f"| hot bytes max / budget | {r['hot_bytes_max']:,} / {r['hot_budget']:,} |",
        f"| warm bytes max / budget | {r['warm_bytes_max']:,} / {r['warm_budget']:,} |",
        f"| query latency p50 first 5% / last 5% | {r['latency_start_ms']} / {r['latency_end_ms']} ms |",
        f"| query latency p99 first 5% / last 5% | {r['latency_p99_start_ms']} / {r['latency_p99_end_ms']} ms |",
        f"| warm items (IVF + buffer) first 5% / last 5% | {r['warm_items_start']:,} / {r['warm_items_end']:,} |",
        "",
        "Accounting (every event in one place):",
        "",
        f"- planned {acc['events_planned']:,}, replayed {acc['events_replayed']:,}, reader skips {acc['reader_skips']}; "
        f"keys seen once {acc['keys_once']:,}, missing {acc['keys_missing']}, duplicated {acc['keys_duplicated']}",
        f"- arrivals {acc['arrivals']:,} = dropped by the prefilter {acc['dropped']:,} + inserted {acc['inserted']:,}",
        f"- inserted {acc['inserted']:,} = hot {acc['hot']:,} + warm {acc['warm']:,} + buffer {acc['buffer']:,} "
        f"+ evicted {acc['evicted']:,}",
        f"- balanced: **{acc['balanced']}**",
        "",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
