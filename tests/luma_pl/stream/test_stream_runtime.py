"""StreamRuntime: the one object a stream runs through in training and evaluation (ingest / query),
and the callbacks driving it in fit and in test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback

from data_modules import write_blocks
from luma_pl.admission.pipeline import AdmissionConfig
from luma_pl.bridge.procrustes import ProcrustesConfig, StreamingProcrustes
from luma_pl.memory import MemoryConfig, TieredMemory
from luma_pl.memory.migration import HitMigration
from luma_pl.memory.policy import HOT
from luma_pl.stream import event_ids
from luma_pl.stream.bridge import StreamBridge
from luma_pl.stream.runtime import StreamRuntime
from luma_pl.telemetry import safe_at_k as S

ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]
D_S, D_C = 16, 24


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def memory(**kw):
    cfg = {"dim": D_C, "hot_max_items": 64, "hot_max_bytes": 1 << 20, "warm_max_items": 0, "pq_m": 4,
           "hot_backend": "flat", **kw}
    return TieredMemory(MemoryConfig(**cfg))


def fitted_bridge(seed=0):
    """A Procrustes bridge after one refresh on 64 pairs of a random rotation-ish map."""
    rng = np.random.default_rng(seed)
    s = unit(rng.standard_normal((64, D_S)))
    m = rng.standard_normal((D_S, D_C))
    c = unit(s @ m)
    b = StreamingProcrustes(ProcrustesConfig(d_s=D_S, d_c=D_C, refresh_every=64))
    b.fit_step(torch.from_numpy(s).double(), torch.from_numpy(c).double())
    assert int(b.refreshes) == 1
    return b, s, c


def test_ingest_applies_the_replay_rule_and_counts_every_row():
    rt = StreamRuntime(memory(), replicated=True)
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((10, D_C)))
    ids = event_ids([f"k{i}" for i in range(10)])
    first = rt.ingest(ids[:6], x[:6])
    assert first.replayed == 0 and first.ids.tolist() == ids[:6].tolist() and first.decision is None
    # a batch that repeats two earlier events and one of its own: those three are skipped, counted
    again = rt.ingest(np.concatenate([ids[4:10], ids[9:10]]), np.concatenate([x[4:10], x[9:10]]))
    assert again.replayed == 3 and again.ids.tolist() == ids[6:10].tolist()
    assert len(rt.memory) == 10 and rt.counts == {"arrivals": 13, "ingested": 10, "replayed": 3, "queries": 0}
    # the state travels: a fresh runtime with it skips the same ids
    rt2 = StreamRuntime(memory(), replicated=True)
    rt2.load_state_dict(rt.state_dict())
    assert rt2.ingest(ids[:2], x[:2]).replayed == 2 and rt2.counts["replayed"] == 5
    with pytest.raises(ValueError, match="d=7 but the memory holds d=24"):
        rt.ingest(np.array([1]), np.zeros((1, 7), np.float32))


def test_ingest_through_admission_sends_the_decision_as_the_hot_mask():
    rt = StreamRuntime(memory(warm_max_items=256, nlist=2, pq_nbits=4), replicated=True)
    pipe = rt.use_admission(AdmissionConfig.from_dict({"prefilter": {"basis": "none"}, "cluster": {"m": 4},
                                                       "counter": {"policy": "space_saving", "capacity": 2}}))
    rng = np.random.default_rng(1)
    centers = unit(rng.standard_normal((4, D_C)))
    x = unit(centers[rng.integers(0, 4, 96)] + 0.05 * rng.standard_normal((96, D_C)))
    ids = event_ids([f"e{i}" for i in range(96)])
    done = rt.ingest(ids, x)
    d = done.decision
    assert d is not None and pipe.stats["arrivals"] == 96
    hot = set(rt.memory.ids[rt.memory.keys_in(HOT)].tolist())
    assert hot <= set(ids[d.keep & d.heavy].tolist()) and hot  # only heavy arrivals went hot
    with pytest.raises(ValueError, match="already has an admission pipeline"):
        rt.use_admission(AdmissionConfig())


def test_query_is_the_certify_sequence_and_refuses_an_unready_bridge():
    bridge, s, c = fitted_bridge()
    mem = memory()
    rt = StreamRuntime(mem, StreamBridge(bridge, learn=False), replicated=True)
    ids = event_ids([f"i{n}" for n in range(64)])
    rt.ingest(ids, c)
    a = torch.from_numpy(s[:20])
    ans = rt.query(a, 5, epsilon_source="given", epsilon_value=1e-3)
    # the same sequence written out: bridge, search k + 1, ε, certify with the candidates' vectors
    q, a_norm, u_norm = S.bridge_queries(bridge, a)
    res = mem.search(q.numpy(), 6, rescore=True, record_hits=False)
    choice = S.choose_epsilon(bridge, "given", 1e-3)
    cert = S.certify_search(res, 5, S.query_epsilon(choice, a_norm, u_norm), memory=mem, rescored=True,
                            distances="vectors")
    np.testing.assert_array_equal(ans.result.ids, res.ids)
    assert torch.equal(ans.certificate.safe_at_1, cert.safe_at_1) and torch.equal(ans.certificate.safe_at_k, cert.safe_at_k)
    assert ans.epsilon == choice and rt.counts["queries"] == 20
    assert 0 < int(cert.safe_at_1.sum()) <= 20  # a small ε certifies some answers: the test can fail
    unready = StreamRuntime(memory(), StreamBridge(StreamingProcrustes(ProcrustesConfig(d_s=D_S, d_c=D_C)),
                                                   learn=True))
    with pytest.raises(RuntimeError, match="maps nothing yet"):
        unready.query(a, 5)
    with pytest.raises(ValueError, match="candidates=5 must be >= k \\+ 1"):
        rt.query(a, 5, candidates=5)


def test_migration_runs_the_policy_it_was_given_once():
    rt = StreamRuntime(memory(), replicated=True)
    with pytest.raises(RuntimeError, match="add a TierMigration callback"):
        rt.migrate()
    policy = HitMigration(capacity=16, promote_min_count=1, idle_checks=1, max_moves=8)
    rt.use_migration(policy)
    rt.use_migration(policy)  # the same policy again (fit, then test) is fine
    with pytest.raises(ValueError, match="already has a migration policy"):
        rt.use_migration(HitMigration())
    rt.ingest(event_ids(["a", "b"]), unit(np.random.default_rng(2).standard_normal((2, D_C))))
    assert rt.migrate() == {"promoted": 0, "demoted": 0} and policy.checks == 1


# --- the callbacks drive the runtime in train.py fit (default config) and in evaluate.py test ---------
def _default_shards(folder, n=1536):
    """Synthetic stream in the default config's spaces (wordllama 256 -> minilm 384): clustered
    items, sources a fixed linear image of them; nine in ten queries ask for one of 32 popular early
    items (so their top-k concentrate on a few hundred ids and the other hot items fall idle)."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((12, 384))
    x = unit(centers[rng.integers(0, 12, n)] + 0.6 * rng.standard_normal((n, 384)))
    proj = rng.standard_normal((384, 256))
    s = unit(x @ proj)
    popular = rng.integers(0, 32, n)
    q = s.copy()
    ask = rng.random(n) < 0.9
    q[ask] = s[popular[ask]]
    q = unit(q + 0.02 * rng.standard_normal(q.shape))
    write_blocks(folder, keys=[f"{i:06d}" for i in range(n)], ts=np.arange(n),
                 emb={"wordllama": s, "minilm": x, "query_wordllama": q}, block_events=64, events_per_shard=512)


class MigrationRecorder(Callback):
    """Records, per batch, the ids admission sent hot and the ids migration demoted."""

    def __init__(self):
        self.batch = 0
        self.sent_hot: dict[int, int] = {}  # id -> batch it was inserted hot
        self.demoted_idle: list[tuple[int, int]] = []  # (id, batch) demoted by a migration check

    def _wrap(self, pl_module):
        mem, policy = pl_module.memory.shard, pl_module.runtime().migration
        insert, demote, check = mem.insert, mem.demote, policy.check
        state = {"migrating": False}

        def rec_insert(ids, vectors, hot=None, **kw):
            if hot is not None:
                for i in np.asarray(ids)[np.asarray(hot, bool)].tolist():
                    self.sent_hot.setdefault(int(i), self.batch)
            return insert(ids, vectors, hot=hot, **kw)

        def rec_demote(ids):
            if state["migrating"]:
                self.demoted_idle += [(int(i), self.batch) for i in np.asarray(ids).tolist()]
            return demote(ids)

        def rec_check(memory):
            state["migrating"] = True
            try:
                return check(memory)
            finally:
                state["migrating"] = False

        mem.insert, mem.demote, policy.check = rec_insert, rec_demote, rec_check

    def on_train_start(self, trainer, pl_module):
        self._wrap(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batch += 1


@pytest.mark.slow
def test_default_fit_records_hits_and_migrates_nothing_it_just_admitted(tmp_path, monkeypatch):
    from train import cli_main

    _default_shards(tmp_path / "shards")
    monkeypatch.chdir(tmp_path)  # the default config writes under artifacts/
    cli = cli_main(["--config", str(ROOT / "configs" / "default.yaml"), "--data.root", str(tmp_path / "shards"),
                    "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                    "--trainer.limit_val_batches", "0"], run=False)
    rec = MigrationRecorder()
    cli.trainer.callbacks.append(rec)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    mig = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "TierMigration")
    mem = cli.model.memory
    assert int(mem.hits.sum()) > 0  # the training stream's queries recorded hits
    assert mig.checks == 6 and mig.promotions > 0 and mig.demotions > 0, (mig.checks, mig.promotions, mig.demotions)
    assert rec.sent_hot  # admission sent items hot
    # no item is demoted for idleness within one batch of admission sending it hot
    early = [(i, b) for i, b in rec.demoted_idle if i in rec.sent_hot and b - rec.sent_hot[i] <= 1]
    assert not early, early[:5]
    assert cli.model.runtime().counts["ingested"] == len(mem.ids[: mem.num_keys]) == 1536


CALLBACKS = [
    {"class_path": "callbacks.heavy_hitter_admission.HeavyHitterAdmission",
     "init_args": {"space": "minilm", "config": {"mode": "items", "prefilter": {"basis": "none"}, "cluster": {"m": 64},
                                                 "counter": {"policy": "space_saving", "capacity": 32}}}},
    {"class_path": "callbacks.tier_migration.TierMigration", "init_args": {"every_n_batches": 2}}]
"""The default config's admission and migration callbacks (eval_default.yaml has none)."""


@pytest.mark.slow
def test_evaluate_with_the_callbacks_driving_the_replay(tmp_path, monkeypatch):
    from evaluate import run_evaluation

    _default_shards(tmp_path / "shards", n=1024)
    monkeypatch.chdir(tmp_path)
    summary, cli = run_evaluation([
        "--config", str(ROOT / "configs" / "eval_default.yaml"), "--data.root", str(tmp_path / "shards"),
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--model.eval.report_dir", str(tmp_path / "report"),
        "--trainer.callbacks", json.dumps(CALLBACKS)])
    cbs = {type(cb).__name__: cb for cb in cli.trainer.callbacks}
    adm, mig = cbs["HeavyHitterAdmission"], cbs["TierMigration"]
    rt = cli.model.runtime()
    assert rt.admission is adm.pipeline and rt.migration is mig.policy  # the callbacks configured the runtime
    assert adm.pipeline.stats["arrivals"] == 1024 and adm.batches == 8
    assert mig.checks == 4 and mig.promotions > 0  # the replay's queries recorded the hits it counted
    assert summary["events"] == 1024 and summary["queries"] > 0
