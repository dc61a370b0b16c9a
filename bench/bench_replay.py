"""Replay throughput (events/s) for precomputed 512-d embeddings, against a raw tarfile read.

    python bench/bench_replay.py [--events 65536] [--dim 512] [--repeats 3]

Measured in the same run, on the same files:
* raw baseline: plain ``tarfile`` streaming + ``np.load`` of every member, nothing else;
* StreamReplayDataset through a DataLoader (``batch_size=None``) with 1 and 2 workers, block layout
  (1024 events per sample): full batches (keys, ts, topics, emb, has, media) as the trainer sees them;
* the per-event layout (one ``.npy`` member per event) for comparison, raw and replayed.
Prints medians over repeats and the ratio replay / raw.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_modules import ReplayConfig, ShardSetWriter, StreamReplayDataset, write_blocks  # noqa: E402
from data_modules.shard_format import load_manifest  # noqa: E402
from data_modules.stream_replay import replay_dataloader  # noqa: E402
from luma_pl.threads import limit_cpu_threads  # noqa: E402


def raw_read(folder: Path) -> int:
    """Events read with nothing but tarfile + np.load (rows of every 2-D .npy, 1 per 1-D one)."""
    import io

    events = 0
    for info in load_manifest(folder).shards:
        with tarfile.open(folder / info.name, mode="r|") as tar:
            for m in tar:
                if m.name.endswith(".npy") and not m.name.endswith(".ts.npy"):
                    arr = np.load(io.BytesIO(tar.extractfile(m).read()), allow_pickle=False)
                    events += arr.shape[0] if arr.ndim == 2 else 1
                tar.members = []
    return events


def replay_read(folder: Path, workers: int, batch_size: int) -> int:
    ds = StreamReplayDataset(ReplayConfig(root=str(folder), batch_size=batch_size, num_workers=workers))
    events = 0
    for batch in replay_dataloader(ds):
        events += batch["emb"]["emb"].shape[0]
    return events


def timed(fn, repeats: int, expect: int) -> float:
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = fn()
        dt = time.perf_counter() - t
        assert n == expect, f"read {n} events, expected {expect}"
        rates.append(n / dt)
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=65536, help="events in the block layout")
    p.add_argument("--event-layout-events", type=int, default=8192, help="events in the per-event layout")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    limit_cpu_threads()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        blocks, events = Path(tmp, "blocks"), Path(tmp, "events")
        n, d = args.events, args.dim
        emb = rng.standard_normal((n, d)).astype(np.float32)
        write_blocks(blocks, keys=[f"{i:09d}" for i in range(n)], ts=np.arange(n), emb={"emb": emb},
                     topics=[str(i // 4096) for i in range(n)], block_events=1024,
                     events_per_shard=-(-n // args.shards))
        m = args.event_layout_events
        with ShardSetWriter(events, "ev", -(-m // args.shards)) as w:
            for i in range(m):
                w.write_event(ts=i, key=f"{i:09d}", topic=str(i // 4096), emb={"emb": emb[i]})
        mb = sum(f.stat().st_size for f in blocks.glob("*.tar")) / 2**20
        print(f"block layout: {n} events x {d}-d in {args.shards} shards ({mb:.0f} MiB); "
              f"per-event layout: {m} events; median of {args.repeats} repeats; batch_size={args.batch_size}")
        raw = timed(lambda: raw_read(blocks), args.repeats, n)
        rows = [("raw tarfile+np.load, blocks", raw)]
        for k in (1, 2):
            rate = timed(lambda k=k: replay_read(blocks, k, args.batch_size), args.repeats, n)
            rows.append((f"replay blocks, num_workers={k}", rate))
        raw_ev = timed(lambda: raw_read(events), args.repeats, m)
        rows.append(("raw tarfile+np.load, per-event", raw_ev))
        rows.append(("replay per-event, num_workers=1",
                     timed(lambda: replay_read(events, 1, args.batch_size), args.repeats, m)))
        for name, rate in rows:
            base = raw if "blocks" in name else raw_ev
            print(f"{name:36s} {rate:12,.0f} events/s   ratio vs raw {rate / base:5.2f}")


if __name__ == "__main__":
    main()
