"""HeavyHitterAdmission and TierMigration under a real Trainer over a real StreamReplayDataModule,
including a checkpoint save / resume that restores their counters (and the memory) exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer

from callbacks.heavy_hitter_admission import HeavyHitterAdmission
from callbacks.memory_checkpoint import MemoryCheckpoint
from callbacks.tier_migration import TierMigration
from data_modules import StreamReplayDataModule, write_blocks
from luma_pl.configuration import ConfigError
from luma_pl.modules import ProcrustesBridgeModule
from luma_pl.stream import event_ids

D, N, BATCH = 32, 320, 16
ADMISSION = {"prefilter": {"basis": "adaptive", "threshold_mode": "quantile", "alpha": 0.1, "window": 64,
                           "interval": 32},
             "cluster": {"m": 12}, "counter": {"policy": "space_saving", "capacity": 4},
             "adaptive": {"enabled": True, "window": 64}}


def write_stream(folder):
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((5, D))
    x = np.concatenate([c + 0.4 * rng.standard_normal((N // 5, D)) for c in centers]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    q[::3] = x[:: 3][0]  # a third of the queries ask for the same item: a clear heavy hitter
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    write_blocks(folder, keys=[f"{i:07d}" for i in range(N)], ts=np.arange(N), emb={"minilm": x, "query_minilm": q},
                 topics=[f"t{i // (N // 5)}" for i in range(N)], block_events=32, events_per_shard=64)


MEMORY = {"dim": D, "hot_max_items": 40, "hot_max_bytes": 1 << 20, "warm_max_items": 150, "warm_max_bytes": 1 << 21,
          "nlist": 2, "pq_m": 4, "pq_nbits": 4, "hnsw_m": 8}


def bridge_module(memory: dict = MEMORY, stream_queries_k: int = 3) -> ProcrustesBridgeModule:
    """The real training module: it ingests each batch's items through its stream runtime and asks
    the batch's queries of the memory (recording hits) once the bridge has refreshed. Its anchor
    pairs are (x, x), so the bridge is the identity and the queries reach the memory as written."""
    return ProcrustesBridgeModule(bridge={"d_s": D, "d_c": D, "refresh_every": 32},
                                  module={"source_space": "minilm", "canonical_space": "minilm",
                                          "query_space": "query_minilm", "item_space": "minilm",
                                          "stream_queries_k": stream_queries_k},
                                  memory=memory)


class SaveAt(Callback):
    def __init__(self, path, at):
        self.path, self.at, self.seen = path, at, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen == self.at:
            trainer.save_checkpoint(self.path)


def trainer(tmp_path, callbacks, **kw):
    return Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                   limit_val_batches=0,
                   enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                   default_root_dir=tmp_path, callbacks=callbacks, **kw)


def run(tmp_path, shards, save_at=None, resume=None):
    model = bridge_module()
    adm = HeavyHitterAdmission(ADMISSION, space="minilm")
    mig = TierMigration(every_n_batches=4, capacity=16, promote_min_count=2, idle_checks=2, max_moves=8)
    cbs = [adm, mig, MemoryCheckpoint()]
    if save_at:
        cbs.append(SaveAt(tmp_path / "mid.ckpt", save_at))
    dm = StreamReplayDataModule(root=str(shards), batch_size=BATCH)
    trainer(tmp_path, cbs).fit(model, datamodule=dm, ckpt_path=resume)
    return model, adm, mig


def summary(model, adm, mig):
    mem = model.memory
    return {"pipe": dict(adm.pipeline.stats), "counter": [a.tolist() for a in adm.pipeline.counter.summary()],
            "u_B": (adm.pipeline.counter.admit_prob, adm.pipeline.counter.capacity),
            "mem": {k: v for k, v in mem.counters.items() if k != "tick"}, "audit": mem.audit(),
            "mig": (mig.checks, mig.promotions, mig.demotions, [a.tolist() for a in mig.counter.summary()]),
            "hot": sorted(mem.ids[mem.keys_in(0)].tolist())}


@pytest.mark.slow
def test_callbacks_run_count_and_resume_exactly(tmp_path):
    shards = tmp_path / "shards"
    write_stream(shards)
    model, adm, mig = run(tmp_path / "a", shards)
    full = summary(model, adm, mig)
    mem = model.memory
    # everything is counted: arrivals = dropped + inserted; inserted = hot + warm + buffer + evicted
    assert full["pipe"]["arrivals"] == N
    assert full["pipe"]["dropped"] + mem.counters["inserted"] == N and full["pipe"]["dropped"] > 0
    assert sum(full["audit"].values()) == mem.counters["inserted"] and full["audit"]["evicted"] > 0
    # the migration found the heavily queried item and moved things on access statistics
    assert mig.checks == N // BATCH // 4 and mig.promotions > 0
    hot_item = int(event_ids(["0000000"])[0])  # queries q[::3] all ask for item 0 (key 0000000)
    if mem.location(hot_item) != "evicted":
        assert mem.location(hot_item) == "hot"
    # resume from a mid-stream checkpoint: identical counters, memory and migration state at the end
    model_b, adm_b, mig_b = run(tmp_path / "b", shards, save_at=9)
    assert summary(model_b, adm_b, mig_b) == full
    ckpt = torch.load(tmp_path / "b" / "mid.ckpt", weights_only=True)  # tensors and primitives only
    model_c, adm_c, mig_c = run(tmp_path / "c", shards, resume=str(tmp_path / "b" / "mid.ckpt"))
    assert summary(model_c, adm_c, mig_c) == full
    assert any("HeavyHitterAdmission" in k for k in ckpt["callbacks"])


def test_config_errors():
    with pytest.raises(ConfigError, match="mode"):
        HeavyHitterAdmission({"mode": "centroids"})
    with pytest.raises(ValueError, match="every_n_batches"):
        TierMigration(every_n_batches=0)
    adm = HeavyHitterAdmission(ADMISSION)
    adm.load_state_dict({})  # a checkpoint written before the callback existed
    assert adm.batches == 0
    mig = TierMigration()
    mig.load_state_dict({})
    assert mig.checks == 0 and len(mig.counter) == 0


def run_prototypes(tmp_path, shards, save_at=None, resume=None):
    model = bridge_module({"dim": D, "hot_max_items": 16, "hot_max_bytes": 1 << 20, "warm_max_items": 0, "pq_m": 4,
                           "hot_backend": "flat"}, stream_queries_k=0)
    cfg = {**ADMISSION, "mode": "prototypes", "upsert_interval": 48, "probe": 2, "members_per_label": 20}
    adm = HeavyHitterAdmission(cfg, space="minilm", prototype_dir=str(tmp_path / "members"))
    cbs = [adm, MemoryCheckpoint()]
    if save_at:
        cbs.append(SaveAt(tmp_path / "mid.ckpt", save_at))
    trainer(tmp_path, cbs).fit(model, datamodule=StreamReplayDataModule(root=str(shards), batch_size=BATCH),
                                ckpt_path=resume)
    return model, adm


@pytest.mark.slow
def test_prototypes_mode_counts_searches_exactly_and_resumes(tmp_path):
    shards = tmp_path / "shards"
    write_stream(shards)
    model, adm = run_prototypes(tmp_path / "a", shards)
    idx, pipe = model.stream.prototypes, adm.pipeline
    assert idx is adm.prototypes and idx.stats["upserts"] == N // 48
    # every arrival is accounted for: dropped by the prefilter, not admitted, or kept; kept members
    # are held or dropped (label left the counter, or over members_per_label), all counted
    s = idx.stats
    assert pipe.stats["dropped"] + s["not_admitted"] + s["kept"] == N
    assert s["kept"] == idx.held() + s["member_drops"] and s["member_drops"] > 0
    assert all(len(m) <= 20 for m in idx.members.values())
    # the memory holds the upserted centroids (id = label), at most B of them
    assert set(model.memory.ids[model.memory.keys_in(0)].tolist()) == idx.indexed
    assert 0 < len(idx.indexed) <= pipe.counter.capacity
    # search = brute force: the `probe` nearest indexed centroids (as of the last upsert, which the
    # memory holds), then exact scores of their members
    rng = np.random.default_rng(1)
    q = rng.standard_normal((12, D)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids, sc = idx.search(q, 5)
    labels = np.array(sorted(idx.indexed))
    cents = model.memory.originals.get(model.memory._lookup(labels))
    xs = {i: idx.store.get(np.array([r]))[0] for m in idx.members.values() for i, r in m}
    for qi in range(len(q)):
        near = labels[np.argsort(-(cents @ q[qi]), kind="stable")[:2]]
        cand = [i for lab in near.tolist() for i, _ in idx.members.get(lab, ())]
        ref = sorted(cand, key=lambda i: -float(xs[i] @ q[qi]))[:5]
        assert ids[qi, : len(ref)].tolist() == ref
        np.testing.assert_allclose(sc[qi, : len(ref)], [xs[i] @ q[qi] for i in ref], rtol=1e-5)
    # resume from a mid-stream checkpoint: same members, counters and answers
    run_prototypes(tmp_path / "b", shards, save_at=7)
    model_c, adm_c = run_prototypes(tmp_path / "c", shards, resume=str(tmp_path / "b" / "mid.ckpt"))
    def member_ids(index):  # store rows differ after a resume (the vectors are appended anew)
        return {lab: [i for i, _ in m] for lab, m in index.members.items()}

    assert member_ids(model_c.stream.prototypes) == member_ids(idx) and model_c.stream.prototypes.stats == idx.stats
    ids_c, sc_c = model_c.stream.prototypes.search(q, 5)
    np.testing.assert_array_equal(ids_c, ids)
    np.testing.assert_allclose(sc_c, sc, rtol=1e-6)
    ckpt = torch.load(tmp_path / "b" / "mid.ckpt", weights_only=True)
    state = next(v for k, v in ckpt["callbacks"].items() if "HeavyHitterAdmission" in k)
    assert state["prototypes"]["member_vec"].shape[1] == D
