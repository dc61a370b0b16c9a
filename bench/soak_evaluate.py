"""Soak run of ``evaluate.py`` itself (issue 8, "Load"): >= 1M events through the streaming replay
evaluator (``evaluate.run_evaluation``: LightningCLI, ``StreamEvaluator``, report), memory full.

Not a test (minutes, not seconds): ``nice -n 10 python bench/soak_evaluate.py`` writes
``bench/results/soak_evaluate_<events>.json``; ``--events 50000`` is a quick run (< 1 min).
``bench/soak_replay.py`` soaks the memory API; this one soaks the evaluator around it (query pool,
id bookkeeping, bridge, certificate, report), so what grows with the stream there shows here.

1. **Stream**: N synthetic events written with the project's shard writer (``ShardSetWriter``
   block samples, large shards): source vectors s (d_s), canonical items c = unit(Q s + noise)
   with Q a random orthogonal map (d_c x d_s), queries unit(s + noise); unit float32 rows. Per
   block, some spaces are absent (blocks without an item, without an anchor source, without a
   query) and a few blocks re-send the previous block's keys (duplicates), so every branch of the
   evaluator's accounting is exercised; the expected counts are known exactly from the writer.
2. **Run**: ``evaluate.run_evaluation(args)`` in a fresh subprocess (its RSS is its own; one
   thread, no DataLoader workers, no logger), memory budgets far below N (hot ``--hot-items``, warm
   ``--warm-items``): after ~hot + warm events every batch demotes and evicts.
3. **Read** ``report.json``: per-window RSS (the report's ``rss_mb`` when present, else VmRSS of the
   subprocess sampled from outside every ``--sample-s`` seconds and mapped to windows by time),
   query latency p50, ingest rate, over the first and the last 5% of the stream; the accounting
   (events replayed = written; ingested + duplicates skipped + rows without an item = events, as
   far as the report exposes it; checks the report cannot make are made on the live evaluator in
   the subprocess and listed separately). Exit 1 if the run fails or an accounting check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_modules.shard_writer import ShardSetWriter  # noqa: E402

# Runs in the subprocess: the evaluation, then what the report does not hold, read off the live
# objects (labelled "live" in the results, never mixed with the report's figures).
CHILD = r"""
import json, sys, time
args, side = json.loads(sys.argv[1]), sys.argv[2]
from evaluate import run_evaluation
summary, cli = run_evaluation(args)
m, dm = cli.model, cli.datamodule
mem = m.local_memory
status = {}
with open("/proc/self/status") as f:
    for line in f:
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            status[name] = int(rest.split()[0]) * 1024
live = {"t0_epoch": None, "counters": {k: int(v) for k, v in mem.counters.items()},
        "audit": mem.audit(), "bytes_by_tier": mem.bytes_by_tier(), "seen_ids": m.stream_state()["seen_ids"],
        "query_pool_rows": m.stream_state()["query_rows"], "query_pool_held": m.stream_state()["query_pool"],
        "bridge_refreshes": int(m.bridge.refreshes), "bridge_pairs": int(m.bridge.pairs_total),
        "status_end": status, "datamodule": {"events_seen": dm.events_seen, "skipped_total": dm.skipped_total}}
with open(side, "w") as f:
    json.dump(live, f)
"""


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_stream(folder: Path, a: argparse.Namespace) -> dict:
    """N events as block shards; returns the counts the evaluator must reproduce."""
    if a.dc < a.ds:
        raise SystemExit(f"--dc {a.dc} < --ds {a.ds}: the map Q (d_c x d_s) must have orthonormal columns")
    t = time.perf_counter()
    rng = np.random.default_rng(a.seed)
    q, _ = np.linalg.qr(rng.standard_normal((a.dc, a.ds)))  # (d_c, d_s), orthonormal columns
    q = q.astype(np.float32)
    n, be = a.events, a.block_events
    exp = {"events": n, "blocks": 0, "no_item_rows": 0, "duplicate_rows": 0, "no_source_rows": 0,
           "no_query_rows": 0, "anchor_pairs": 0, "query_rows": 0}
    prev = None  # (keys, emb) of the previous fresh block: what a duplicate block re-sends
    with ShardSetWriter(folder, "events", events_per_shard=a.events_per_shard) as w:
        for c0 in range(0, n, a.events_per_shard):  # vectors drawn one shard at a time (bounded RAM)
            c1 = min(c0 + a.events_per_shard, n)
            m = c1 - c0
            s = _unit(rng.standard_normal((m, a.ds), dtype=np.float32))  # (m, d_s)
            c = _unit(s @ q.T + a.item_noise * rng.standard_normal((m, a.dc), dtype=np.float32))  # (m, d_c)
            qs = _unit(s + a.query_noise * rng.standard_normal((m, a.ds), dtype=np.float32))  # (m, d_s)
            for b0 in range(c0, c1, be):
                b1 = min(b0 + be, c1)
                k = b1 - b0
                ts = np.arange(b0, b1, dtype=np.int64)
                u = rng.random(4)
                if prev is not None and len(prev[0]) == k and u[3] < a.p_dup:
                    keys, emb = prev  # the previous block again: every row is a duplicate key
                    exp["duplicate_rows"] += k
                    prev = None  # never a duplicate of a duplicate
                else:
                    keys = [f"{i:09d}" for i in range(b0, b1)]
                    emb = {a.item_space: c[b0 - c0:b1 - c0], a.source_space: s[b0 - c0:b1 - c0],
                           a.query_space: qs[b0 - c0:b1 - c0]}
                    if u[0] < a.p_no_item:
                        del emb[a.item_space]
                    if u[1] < a.p_no_source:
                        del emb[a.source_space]
                    if u[2] < a.p_no_query:
                        del emb[a.query_space]
                    prev = (keys, emb) if a.item_space in emb else None
                    exp["no_item_rows"] += k * (a.item_space not in emb)
                exp["no_source_rows"] += k * (a.source_space not in emb)
                exp["no_query_rows"] += k * (a.query_space not in emb)
                exp["anchor_pairs"] += k * (a.source_space in emb and a.item_space in emb)
                exp["query_rows"] += k * (a.query_space in emb)
                exp["blocks"] += 1
                w.write_block(keys=keys, ts=ts, emb=emb)
    manifest_spaces = {a.item_space: a.dc, a.source_space: a.ds, a.query_space: a.ds}
    exp["ingested"] = n - exp["no_item_rows"] - exp["duplicate_rows"]
    exp["shards"] = len(w.shards)
    exp["bytes"] = int(sum(x.bytes for x in w.shards))
    exp["spaces"] = manifest_spaces
    exp["write_s"] = round(time.perf_counter() - t, 2)
    return exp


def eval_args(a: argparse.Namespace, shards: Path, work: Path, window_batches: int) -> list[str]:
    return [
        "--seed_everything", str(a.seed),
        "--data.root", str(shards), "--data.batch_size", str(a.batch), "--data.num_workers", "0",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.enable_checkpointing", "false", "--trainer.default_root_dir", str(work / "run"),
        "--model.eval.item_space", a.item_space, "--model.eval.source_space", a.source_space,
        "--model.eval.query_space", a.query_space, "--model.eval.k", "10",
        "--model.eval.fresh_queries", str(a.fresh_queries), "--model.eval.old_queries", str(a.old_queries),
        "--model.eval.window_batches", str(window_batches), "--model.eval.report_dir", str(work / "report"),
        "--model.bridge.d_s", str(a.ds), "--model.bridge.d_c", str(a.dc),
        "--model.bridge.refresh_every", str(a.refresh_every),
        "--model.memory.dim", str(a.dc), "--model.memory.hot_backend", a.hot_backend,
        "--model.memory.hot_max_items", str(a.hot_items), "--model.memory.hot_max_bytes", str(int(a.hot_mb * 2**20)),
        "--model.memory.warm_max_items", str(a.warm_items),
        "--model.memory.warm_max_bytes", str(int(a.warm_mb * 2**20)),
        "--model.memory.pq_m", str(a.pq_m), "--model.memory.pq_nbits", str(a.pq_nbits),
        "--model.memory.nlist", str(a.nlist), "--model.memory.hnsw_m", "16",
        "--model.memory_dir", str(work / "memory"),
        *a.eval_arg,
    ]


class RssSampler(threading.Thread):
    """VmRSS / RssAnon / RssFile of one pid from /proc/<pid>/status every ``every`` seconds."""

    def __init__(self, pid: int, every: float):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int, int, int]] = []  # (epoch s, VmRSS, RssAnon, RssFile) bytes
        self.stop = threading.Event()

    def read(self) -> tuple[float, int, int, int] | None:
        got = {}
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    name, _, rest = line.partition(":")
                    if name in ("VmRSS", "RssAnon", "RssFile"):
                        got[name] = int(rest.split()[0]) * 1024
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return None
        if "VmRSS" not in got:  # a zombie has no memory lines
            return None
        return (time.time(), got["VmRSS"], got.get("RssAnon", 0), got.get("RssFile", 0))

    def run(self) -> None:
        while not self.stop.is_set():
            s = self.read()
            if s is not None:
                self.samples.append(s)
            self.stop.wait(self.every)


def run_child(args: list[str], work: Path, a: argparse.Namespace) -> tuple[int, float, RssSampler, dict | None]:
    side = work / "live.json"
    side.unlink(missing_ok=True)
    env = dict(os.environ, LUMA_NUM_THREADS=os.environ.get("LUMA_NUM_THREADS", "1"), PYTHONPATH=str(ROOT),
               WANDB_MODE="disabled")
    log = open(work / "evaluate.log", "w")
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args), str(side)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    sampler = RssSampler(proc.pid, a.sample_s)
    sampler.start()
    next_print = time.perf_counter() + a.print_s
    while proc.poll() is None:
        time.sleep(0.1)
        if time.perf_counter() >= next_print and sampler.samples:
            next_print += a.print_s
            print(f"  {time.perf_counter() - t:7.1f} s  evaluate.py RSS {sampler.samples[-1][1] / 2**20:7.1f} MiB",
                  flush=True)
    wall = time.perf_counter() - t
    sampler.stop.set()
    sampler.join()
    log.close()
    live = json.loads(side.read_text()) if side.exists() else None
    return proc.returncode, wall, sampler, live


def _median(v: list) -> float:
    v = [float(x) for x in v if x is not None and math.isfinite(float(x))]
    return float(np.median(v)) if v else math.nan


def _ratio(a: float, b: float) -> float:
    return b / a if a and math.isfinite(a) and math.isfinite(b) else math.nan


def analyse(report: dict, exp: dict, sampler: RssSampler, live: dict | None, a: argparse.Namespace) -> dict:
    series = report["series"]
    summ = report["summary"]
    n = exp["events"]
    ev = np.array([p["events"] for p in series], np.int64)
    start = np.concatenate([[0], ev[:-1]])
    first = [i for i in range(len(series)) if ev[i] <= math.ceil(0.05 * n)] or [0]
    last = [i for i in range(len(series)) if start[i] >= math.floor(0.95 * n)] or [len(series) - 1]
    # RSS per window: the evaluator's own figure when the report has it, else the outside samples
    if all("rss_mb" in p and p["rss_mb"] is not None for p in series):
        rss_source = "report rss_mb"
        rss = np.array([float(p["rss_mb"]) for p in series])
    else:
        rss_source = f"VmRSS sampled from outside every {a.sample_s} s, mapped to windows by time"
        t0 = (live or {}).get("t0_epoch")
        ts = np.array([s[0] for s in sampler.samples])
        vm = np.array([s[1] for s in sampler.samples]) / 2**20
        if t0 is None or not len(ts):
            rss = np.full(len(series), math.nan)
            rss_source += " (unmapped: no start time from the subprocess)"
        else:
            rss = np.interp(t0 + np.array([p["wall_s"] for p in series]), ts, vm)
    wall = np.array([p["wall_s"] for p in series], np.float64)
    dwall = np.diff(np.concatenate([[0.0], wall]))
    e2e = (ev - start) / np.maximum(dwall, 1e-9)  # events/s per window, everything included

    def span(idx, values):
        return _median([values[i] for i in idx])

    rows = {}
    for name, values in (("rss_mb", list(rss)), ("latency_p50_ms", [p["latency_p50_ms"] for p in series]),
                         ("latency_p99_ms", [p["latency_p99_ms"] for p in series]),
                         ("ingest_events_per_s", [p["ingest_per_s"] for p in series]),
                         ("end_to_end_events_per_s", list(e2e)),
                         ("memory_items", [p["hot_items"] + p["warm_items"] for p in series]),
                         ("recall@k", [p["recall@k"] for p in series])):
        f, l_ = span(first, values), span(last, values)
        rows[name] = {"first_5pct": f, "last_5pct": l_, "last_over_first": _ratio(f, l_)}
    # RSS slope over the second half of the stream (memory full there): bytes per event
    half = ev >= n // 2
    slope = math.nan
    if half.sum() >= 3 and np.isfinite(rss[half]).all():
        slope = float(np.polyfit(ev[half].astype(np.float64), rss[half] * 2**20, 1)[0])

    lastp = series[-1]
    checks = []  # (what, expected, got, ok or None when the report cannot tell)

    def check(what, want, got):
        checks.append({"check": what, "expected": want, "got": got,
                       "ok": None if got is None else bool(want == got)})

    check("report: events replayed == events written", n, int(summ.get("events", lastp["events"])))
    check("report: duplicates_skipped == duplicate rows written", exp["duplicate_rows"],
          int(summ["duplicates_skipped"]) if "duplicates_skipped" in summ else None)
    if all("ingested" in p for p in series):
        ingested = int(sum(p["ingested"] for p in series))
        check("report: sum(ingested) == events - duplicates - rows without an item", exp["ingested"], ingested)
        how_ingested = "report"
    else:
        ingested = None
        how_ingested = "inferred"
    held = int(lastp["hot_items"] + lastp["warm_items"] + lastp["evicted"] + lastp.get("dropped", 0))
    check("report (inferred): hot + warm(+buffer) + evicted + dropped at the end == items ingested",
          exp["ingested"], held)
    if ingested is not None:
        dup = int(summ.get("duplicates_skipped", 0))
        check("report: ingested + duplicates_skipped + rows without an item == events", n,
              ingested + dup + exp["no_item_rows"] if "no_item_rows" not in lastp
              else ingested + dup + int(sum(p["no_item_rows"] for p in series)))
    cannot = []
    if not all("ingested" in p for p in series):
        cannot.append("items ingested per window (the evaluator sums 'ingested' but the point only has "
                      "ingest_per_s = ingested / ingest_s); checked as hot + warm + evicted + dropped instead")
    if not any(k in lastp for k in ("no_item_rows", "rows_without_item", "missing_item")):
        cannot.append("rows without an item (has[item_space] False): not counted; taken from the writer")
    if not any("skipped" in k and "dup" not in k for k in lastp):
        cannot.append("reader skips (batch['skipped'], corrupt samples/rows): the evaluator ignores them and "
                      "the DataModule counts them only in training")
    if not any(k in lastp for k in ("anchor_pairs", "pairs", "bridge_pairs")):
        cannot.append("anchor pairs fitted by the bridge, bridge refreshes")
    if "inserted" not in lastp:
        cannot.append("the memory's own 'inserted' counter and audit() (tier invariants)")
    if not any(k in lastp for k in ("rss_mb", "rss_bytes")):
        cannot.append("process RSS per window (measured from outside instead)")
    if live:
        cnt = live["counters"]
        check("live: memory.counters['inserted'] == items ingested", exp["ingested"], cnt["inserted"])
        check("live: evaluator's seen ids == distinct event ids with an item", exp["ingested"], live["seen_ids"])
        check("live: audit() hot + warm + buffer + evicted == inserted", cnt["inserted"],
              sum(live["audit"].get(t, 0) for t in ("hot", "warm", "buffer", "evicted")))
        check("live: bridge pairs == anchor pairs written", exp["anchor_pairs"], live["bridge_pairs"])
        check("live: query pool rows == rows with a query", exp["query_rows"], live["query_pool_rows"])
    ok = all(c["ok"] is not False for c in checks)
    full_at = next((int(p["events"]) for p in series if p["evicted"] > 0), None)
    outside = [s[1] for s in sampler.samples]
    return {
        "events": n, "windows": len(series), "windows_first_5pct": len(first), "windows_last_5pct": len(last),
        "rss_source": rss_source, "spans": rows, "rss_slope_bytes_per_event_second_half": slope,
        "peak_rss_mb_outside": round(max(outside) / 2**20, 1) if outside else None,
        "vm_hwm_mb": round(live["status_end"]["VmHWM"] / 2**20, 1) if live else None,
        "rss_end_mb": {k: round(v / 2**20, 1) for k, v in live["status_end"].items()} if live else None,
        "memory_full_at_events": full_at, "ingested_from": how_ingested,
        "accounting": checks, "balanced": ok, "report_cannot_check": cannot,
        "queries": int(summ.get("queries", 0)), "summary": summ, "live": live,
        "series_compact": [[int(p["events"]), round(float(r), 1) if math.isfinite(r) else None, p["latency_p50_ms"],
                            round(p["ingest_per_s"], 1), p["hot_items"], p["warm_items"], p["evicted"],
                            round(p["wall_s"], 2)] for p, r in zip(series, rss, strict=True)],
        "series_compact_columns": ["events", "rss_mb", "latency_p50_ms", "ingest_per_s", "hot", "warm", "evicted",
                                   "wall_s"],
        "rss_samples_outside": [[round(s[0] - sampler.samples[0][0], 2), round(s[1] / 2**20, 1),
                                 round(s[2] / 2**20, 1), round(s[3] / 2**20, 1)] for s in sampler.samples],
    }


def _fmt(v, nd=2):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}"


def render(r: dict) -> str:
    sp = r["spans"]
    lines = [f"soak of evaluate.py: {r['events']:,} events, batch {r['batch']}, d_s={r['ds']} d_c={r['dc']}, "
             f"memory hot {r['hot_items']:,} + warm {r['warm_items']:,} items (full after "
             f"{_fmt(r['memory_full_at_events'])} events); {r['windows']} windows "
             f"({r['windows_first_5pct']} in the first 5%, {r['windows_last_5pct']} in the last 5%)",
             f"write {r['stream']['write_s']} s ({r['stream']['shards']} shards, "
             f"{r['stream']['bytes'] / 2**20:.1f} MiB); evaluate.py subprocess {r['eval_wall_s']:.1f} s; "
             f"RSS: {r['rss_source']}", "",
             "| figure (median of windows) | first 5% | last 5% | last / first |", "| --- | --- | --- | --- |"]
    for key, label, nd in (("rss_mb", "RSS MiB", 1), ("latency_p50_ms", "query latency p50 ms", 3),
                           ("latency_p99_ms", "query latency p99 ms", 3),
                           ("ingest_events_per_s", "ingest events/s (evaluator's ingest timer)", 0),
                           ("end_to_end_events_per_s", "events/s end to end (window wall time)", 0),
                           ("memory_items", "items held (hot + warm)", 0), ("recall@k", "Recall@10", 3)):
        s = sp[key]
        lines.append(f"| {label} | {_fmt(s['first_5pct'], nd)} | {_fmt(s['last_5pct'], nd)} | "
                     f"{_fmt(s['last_over_first'], 3)} |")
    lines += ["", f"RSS slope over the second half: {_fmt(r['rss_slope_bytes_per_event_second_half'], 1)} bytes/event; "
              f"peak sampled RSS {_fmt(r['peak_rss_mb_outside'], 1)} MiB, VmHWM {_fmt(r['vm_hwm_mb'], 1)} MiB; "
              f"at the end {r['rss_end_mb']}", "", "Accounting:"]
    for c in r["accounting"]:
        mark = {True: "ok  ", False: "FAIL", None: "n/a "}[c["ok"]]
        lines.append(f"  [{mark}] {c['check']}: expected {_fmt(c['expected'])}, got {_fmt(c['got'])}")
    lines += ["", "Not checkable from report.json:"] + [f"  - {c}" for c in r["report_cannot_check"]]
    lines += ["", f"balanced: {r['balanced']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=1_048_576)
    p.add_argument("--ds", type=int, default=16, help="source (and query) space dimension")
    p.add_argument("--dc", type=int, default=16, help="canonical (item) space dimension = memory dim")
    p.add_argument("--item-space", default="minilm")
    p.add_argument("--source-space", default="wordllama")
    p.add_argument("--query-space", default="query_wordllama")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--windows", type=int, default=200, help="about this many report windows over the stream")
    p.add_argument("--fresh-queries", type=int, default=32)
    p.add_argument("--old-queries", type=int, default=32)
    p.add_argument("--refresh-every", type=int, default=8192, help="bridge refresh every this many pairs")
    p.add_argument("--hot-items", type=int, default=2048)
    p.add_argument("--hot-mb", type=float, default=4)
    p.add_argument("--hot-backend", default="hnsw")
    p.add_argument("--warm-items", type=int, default=16384)
    p.add_argument("--warm-mb", type=float, default=8)
    p.add_argument("--pq-m", type=int, default=8)
    p.add_argument("--pq-nbits", type=int, default=8)
    p.add_argument("--nlist", type=int, default=64)
    p.add_argument("--block-events", type=int, default=256)
    p.add_argument("--events-per-shard", type=int, default=131072)
    p.add_argument("--item-noise", type=float, default=0.05)
    p.add_argument("--query-noise", type=float, default=0.1)
    p.add_argument("--p-no-item", type=float, default=0.02, help="share of blocks without an item")
    p.add_argument("--p-no-source", type=float, default=0.05, help="share of blocks without an anchor source")
    p.add_argument("--p-no-query", type=float, default=0.05, help="share of blocks without a query")
    p.add_argument("--p-dup", type=float, default=0.01, help="share of blocks re-sending the previous block")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-s", type=float, default=1.0, help="seconds between two outside RSS samples")
    p.add_argument("--print-s", type=float, default=30.0, help="seconds between two progress lines")
    p.add_argument("--eval-arg", action="append", default=[],
                   help="extra evaluate.py argument, repeatable, e.g. --eval-arg=--model.admission.mode=items")
    p.add_argument("--workdir", default=None, help="shards, memory, report (default: a temp dir, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = p.parse_args(argv)

    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="luma_soak_eval_"))
    work.mkdir(parents=True, exist_ok=True)
    shards = work / "shards"
    stream_file = work / "stream.json"
    try:
        old = json.loads(stream_file.read_text()) if stream_file.exists() else None
        want = {k: getattr(a, k) for k in ("events", "ds", "dc", "item_space", "source_space", "query_space",
                                           "block_events", "events_per_shard", "item_noise", "query_noise",
                                           "p_no_item", "p_no_source", "p_no_query", "p_dup", "seed")}
        if old is not None and old.get("params") == want and (shards / "manifest.json").exists():
            exp = old["expected"]
            print(f"reusing the stream in {shards}", flush=True)
        else:
            shutil.rmtree(shards, ignore_errors=True)
            exp = write_stream(shards, a)
            stream_file.write_text(json.dumps({"params": want, "expected": exp}, indent=1))
        print(f"stream: {exp['events']:,} events, {exp['shards']} shards ({exp['bytes'] / 2**20:.1f} MiB) written in "
              f"{exp['write_s']} s; {exp['no_item_rows']:,} rows without an item, {exp['duplicate_rows']:,} "
              f"duplicates, {exp['anchor_pairs']:,} anchor pairs, {exp['query_rows']:,} rows with a query", flush=True)
        for d in ("memory", "report", "run"):
            shutil.rmtree(work / d, ignore_errors=True)
        batches = math.ceil(a.events / a.batch)
        window = max(1, batches // a.windows)
        args = eval_args(a, shards, work, window)
        print(f"evaluate.py: {batches} batches, window {window} batches; log {work / 'evaluate.log'}", flush=True)
        rc, wall, sampler, live = run_child(args, work, a)
        if rc != 0 or not (work / "report" / "report.json").exists():
            print((work / "evaluate.log").read_text()[-4000:], file=sys.stderr)
            print(f"evaluate.py failed (exit {rc})", file=sys.stderr)
            return 1
        report = json.loads((work / "report" / "report.json").read_text())
        res = analyse(report, exp, sampler, live, a)
        res.update({"batch": a.batch, "ds": a.ds, "dc": a.dc, "hot_items": a.hot_items, "warm_items": a.warm_items,
                    "eval_wall_s": round(wall, 1), "stream": exp, "window_batches": window,
                    "command": "python bench/soak_evaluate.py " + " ".join(sys.argv[1:] if argv is None else argv),
                    "evaluate_args": args, "report_point_fields": sorted(report["series"][0]) if report["series"] else []})
        text = render(res)
        print(text)
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"soak_evaluate_{a.events}.json"
        path.write_text(json.dumps(res, indent=1, default=float))
        print(f"\nwrote {path}")
        return 0 if res["balanced"] else 1
    finally:
        if not a.workdir and not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
