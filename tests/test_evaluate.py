"""evaluate.py: the streaming replay evaluation end to end on real shards, one process and two
DDP processes (gloo) giving the same metrics, report + plots + offline W&B run on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_modules.shard_writer import write_blocks

ROOT = Path(__file__).resolve().parents[1]


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _stream(folder: Path, n: int = 640, d_s: int = 16, d_c: int = 24, seed: int = 0) -> None:
    """Items c = Q s (Q semi-orthogonal, so Procrustes can recover the map); queries = noisy s."""
    rng = np.random.default_rng(seed)
    s = _unit(rng.standard_normal((n, d_s)))
    q, _ = np.linalg.qr(rng.standard_normal((d_c, d_s)))
    c = _unit(s @ q.T)
    qs = _unit(s + 0.05 * rng.standard_normal((n, d_s)))
    write_blocks(folder, keys=[f"{i:06d}" for i in range(n)], ts=np.arange(n),
                 emb={"src": s, "dst": c, "query_src": qs}, block_events=64, events_per_shard=128)


def _args(shards: Path, out: Path, extra: list[str] = ()) -> list[str]:
    return ["--data.root", str(shards), "--data.batch_size", "64",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(out), "--trainer.enable_checkpointing", "false",
            "--model.eval.item_space", "dst", "--model.eval.source_space", "src",
            "--model.eval.query_space", "query_src", "--model.eval.k", "5",
            "--model.eval.fresh_queries", "16", "--model.eval.old_queries", "16",
            "--model.eval.window_batches", "2", "--model.eval.report_dir", str(out / "report"),
            "--model.bridge.d_s", "16", "--model.bridge.d_c", "24", "--model.bridge.refresh_every", "64",
            "--model.memory.dim", "24", "--model.memory.pq_m", "8", "--model.memory.hot_backend", "flat",
            "--model.memory.hot_max_items", "100000", "--model.memory.warm_max_items", "0", *extra]


def test_evaluate_single_process_report_plots_and_wandb(tmp_path):
    from evaluate import run_evaluation

    _stream(tmp_path / "shards")
    wandb_dir = tmp_path / "wb"
    summary, cli = run_evaluation(_args(tmp_path / "shards", tmp_path / "run", [
        "--trainer.logger+=lightning.pytorch.loggers.WandbLogger", "--trainer.logger.offline", "true",
        "--trainer.logger.save_dir", str(wandb_dir), "--trainer.logger.project", "luma-test"]))
    # the bridge recovers the exact map, the memory is exact: queries find their own item
    assert summary["recall@5"] > 0.95 and summary["hit_rate@5"] == summary["recall@5"]
    assert summary["events"] == 640 and summary["queries"] > 0
    # a streaming bridge still moving: ε > 0, from the refresh interval, said so
    assert summary["epsilon_source"] == "interval" and summary["epsilon_last"] > 0
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert report["summary"]["recall@5"] == summary["recall@5"] and len(report["series"]) == 5
    # per-query latency: 8 single-query probes per batch once the bridge maps, pooled over the run
    samples = [p["latency_samples"] for p in report["series"]]
    assert summary["latency_samples"] == sum(samples) and 0 < sum(samples) <= 8 * 10
    assert 0 < summary["latency_p50_ms"] <= summary["latency_p99_ms"] < 1e3
    assert np.isfinite(summary["search_ms_per_query"])
    # prequential: every anchor pair once the bridge maps, scored before it is learned (the exact map
    # is recovered at the first refresh, so later pairs are found among the batch + the last 1024)
    assert 0 < summary["preq_pairs"] <= 640 and summary["preq_recall@1"] > 0.95
    for png in ("recall_over_time", "memory_over_time", "safe_at_k_over_time", "latency_over_time",
                "prequential_over_time"):
        assert (tmp_path / "run" / "report" / f"{png}.png").stat().st_size > 1000
    runs = list(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_evaluate_prototypes_mode_answers_through_the_members(tmp_path):
    from evaluate import run_evaluation

    _stream(tmp_path / "shards")
    protos = ["--model.admission.mode", "prototypes", "--model.admission.prefilter.basis", "none",
              "--model.admission.cluster.m", "24", "--model.admission.counter.capacity", "16",
              "--model.admission.upsert_interval", "64", "--model.admission.probe", "16",
              "--model.admission.members_per_label", "0", "--trainer.logger", "false"]
    summary, cli = run_evaluation(_args(tmp_path / "shards", tmp_path / "run", protos))
    ev = cli.model
    assert ev.prototypes is not None and summary["events"] == 640 and summary["queries"] > 0
    # the memory holds at most B centroids; the members hold what the counter admitted
    assert len(ev.memory) <= 16 and ev.series[-1]["prototype_members"] == ev.prototypes.held() > 0
    # probing every tracked prototype re-scores every held member exactly: recall is that of the
    # held items (the bridge recovers the map exactly on this stream)
    assert summary["recall@5"] > 0.3
    # exact member scores (ζ = 0): the certificate covers the probed members, as IVF's covers the
    # probed lists; Safe@k <= Safe@1 and both are rates
    assert 0.0 <= summary["safe@5"] <= summary["safe@1"] <= 1.0
    assert all(p["mean_zeta1"] == 0.0 for p in ev.series)


def test_evaluate_repeated_keys_are_skipped_and_counted(tmp_path):
    # the same 320 events twice (a replayed recording appended to itself): the second copies are
    # skipped and counted, the run finishes, and the memory holds each event once
    from evaluate import run_evaluation

    rng = np.random.default_rng(0)
    s = _unit(rng.standard_normal((320, 16)))
    q, _ = np.linalg.qr(rng.standard_normal((24, 16)))
    c = _unit(s @ q.T)
    keys = [f"{i:06d}" for i in range(320)] * 2
    write_blocks(tmp_path / "shards", keys=keys, ts=np.arange(640), block_events=64, events_per_shard=128,
                 emb={"src": np.tile(s, (2, 1)), "dst": np.tile(c, (2, 1)), "query_src": np.tile(s, (2, 1))})
    summary, cli = run_evaluation(_args(tmp_path / "shards", tmp_path / "run", ["--trainer.logger", "false"]))
    assert summary["events"] == 640 and summary["duplicates_skipped"] == 320
    assert len(cli.model.memory) == 320 and cli.model.memory.counters["inserted"] == 320


def _run_cli(args: list[str], cwd: Path) -> dict:
    env = dict(os.environ, LUMA_NUM_THREADS="1", WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((Path(args[args.index("--model.eval.report_dir") + 1]) / "report.json").read_text())


@pytest.mark.slow
@pytest.mark.ddp
def test_evaluate_two_ddp_ranks_equal_one_process(tmp_path):
    _stream(tmp_path / "shards")
    cap = ["--model.eval.certificate_distances", "cap"]  # one mode for both: ranks lack others' vectors
    one = _run_cli(_args(tmp_path / "shards", tmp_path / "one", cap + ["--trainer.devices", "1"]), tmp_path)
    two = _run_cli(_args(tmp_path / "shards", tmp_path / "two", cap + [
        "--trainer.devices", "2", "--trainer.strategy", "ddp"]), tmp_path)
    assert two["config"]["world_size"] == 2 and one["config"]["world_size"] == 1
    for key in ("queries", "events", "recall@5", "mrr@5", "ndcg@5", "hit_rate@5", "safe@1", "safe@5",
                "crude_safe@1", "old_hit_rate", "epsilon_last"):
        assert two["summary"][key] == pytest.approx(one["summary"][key], rel=1e-9, abs=1e-12), key
    for a, b in zip(one["series"], two["series"], strict=True):
        assert a["recall@k"] == pytest.approx(b["recall@k"], abs=1e-12)


def test_evaluate_counts_hostile_content_and_runs_with_k_above_the_memory(tmp_path):
    """Issue 13: a shard with an events.json of the wrong type and a finite row of norm ~3e38 is
    replayed with those events counted (no crash inside the memory), and k far above the items held
    warns and runs."""
    import tarfile
    import warnings

    from tar_helpers import add_member, npy_bytes

    from data_modules.shard_format import list_shards, scan_manifest, write_manifest
    from evaluate import run_evaluation

    _stream(tmp_path / "shards", n=256)
    rng = np.random.default_rng(1)
    with tarfile.open(tmp_path / "shards" / "events-000002.tar", "w") as tar:
        add_member(tar, "bad.events.json", b"[1, 2, 3]")  # valid JSON, wrong type
        add_member(tar, "bad.ts.npy", npy_bytes(np.arange(300, 303)))
        huge = _unit(rng.standard_normal((2, 24)))
        huge[1] = 1e37  # finite, norm ~5e37
        add_member(tar, "h.events.json", json.dumps({"keys": ["h0", "h1"]}).encode())
        add_member(tar, "h.ts.npy", npy_bytes(np.arange(400, 402)))
        add_member(tar, "h.dst.npy", npy_bytes(huge))
        add_member(tar, "h.src.npy", npy_bytes(_unit(rng.standard_normal((2, 16)))))
        add_member(tar, "h.query_src.npy", npy_bytes(_unit(rng.standard_normal((2, 16)))))
    folder = tmp_path / "shards"
    manifest = scan_manifest(list_shards(folder), root=folder)
    write_manifest(manifest, folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary, cli = run_evaluation(_args(folder, tmp_path / "run", ["--trainer.logger", "false",
                                                                       "--model.eval.k", "100000"]))
    assert summary["events"] == 256 + 2 and summary["replay_events_skipped"] == 3
    assert summary["replay_skipped"] == 3  # the bad block (+2 rows reconciled) and the masked row
    assert len(cli.model.memory) == 256 + 1  # h1's item row was masked, h0 was ingested
    assert any("exceeds the" in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_evaluate_with_csls_reports_reranked_metrics_beside_the_cosine_ones(tmp_path):
    """hubness csls: the cosine metrics and Safe@k are those of the cosine ranking (the pool does not
    change its top-k), the CSLS ones come from the re-ranked pool; one process only."""
    from evaluate import run_evaluation

    _stream(tmp_path / "shards")
    plain, _ = run_evaluation(_args(tmp_path / "shards", tmp_path / "plain", ["--trainer.logger", "false"]))
    csls, _ = run_evaluation(_args(tmp_path / "shards", tmp_path / "csls", [
        "--trainer.logger", "false", "--model.eval.hubness", "csls", "--model.eval.csls_pool", "20",
        "--model.eval.csls_bank", "256", "--model.eval.csls_k", "5"]))
    for key in ("recall@5", "mrr@5", "safe@1", "safe@5", "queries"):
        assert csls[key] == pytest.approx(plain[key]), key
    assert np.isfinite(csls["csls_recall@5"]) and 0.8 < csls["csls_recall@5"] <= 1.0  # the map is exact
    assert not np.isfinite(plain.get("csls_recall@5", float("nan")))
    with pytest.raises(ValueError, match="csls_pool"):
        run_evaluation(_args(tmp_path / "shards", tmp_path / "bad", ["--trainer.logger", "false",
                                                                     "--model.eval.hubness", "csls",
                                                                     "--model.eval.csls_pool", "3"]))


def test_a_safe_at_k_logger_puts_its_probe_audit_in_the_table_and_report(tmp_path):
    """With a SafeAtKLogger driving the replay, evaluate.py reports its probes' worst-case and
    calibrated Safe@k and the audit's realised flip rates beside the sampled queries' figures."""
    from evaluate import run_evaluation

    _stream(tmp_path / "shards")
    summary, _ = run_evaluation(_args(tmp_path / "shards", tmp_path / "run", [
        "--trainer.logger", "false", "--trainer.callbacks+=callbacks.safe_at_k_logger.SafeAtKLogger",
        "--trainer.callbacks.k", "5", "--trainer.callbacks.query_space", "query_src",
        "--trainer.callbacks.item_space", "dst"]))
    assert 0.0 <= summary["audit_safe_at_1"] <= 1.0 and summary["audit_violations"] == 0
    assert "audit_calibrated_epsilon" in summary or "audit_calibrated_safe_at_1" in summary
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert report["probe_audit"]["safe_at_1"] == summary["audit_safe_at_1"]
