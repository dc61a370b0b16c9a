"""HeavyHitterAdmission and TierMigration under a real Trainer over a real StreamReplayDataModule,
including a checkpoint save / resume that restores their counters (and the memory) exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks.heavy_hitter_admission import HeavyHitterAdmission, keys_to_ids
from callbacks.memory_checkpoint import MemoryCheckpoint
from callbacks.tier_migration import TierMigration
from data_modules import StreamReplayDataModule, write_blocks
from luma_pl.memory import MemoryConfig, TieredMemory

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


def new_memory():
    return TieredMemory(MemoryConfig(dim=D, hot_max_items=40, hot_max_bytes=1 << 20, warm_max_items=150,
                                     warm_max_bytes=1 << 21, nlist=2, pq_m=4, pq_nbits=4, hnsw_m=8))


class QueryingModule(LightningModule):
    """Holds the memory (``self.memory``) and asks each batch's queries (which records hits)."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.memory = new_memory()

    def training_step(self, batch, batch_idx):
        q = batch["emb"]["query_minilm"]
        if len(q) and len(self.memory):
            self.memory.search(q.numpy(), 3)

    def configure_optimizers(self):
        return None


class SaveAt(Callback):
    def __init__(self, path, at):
        self.path, self.at, self.seen = path, at, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen == self.at:
            trainer.save_checkpoint(self.path)


def trainer(tmp_path, callbacks, **kw):
    return Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                   default_root_dir=tmp_path, callbacks=callbacks, **kw)


def run(tmp_path, shards, save_at=None, resume=None):
    model = QueryingModule()
    adm = HeavyHitterAdmission(ADMISSION, space="minilm")
    mig = TierMigration(every_n_batches=4, capacity=16, promote_min_count=2, idle_checks=2, max_moves=8)
    cbs = [adm, mig, MemoryCheckpoint(model.memory, on_restore=lambda m: setattr(model, "memory", m))]
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
    hot_item = 0  # queries q[::3] all ask for item 0
    if mem.location(hot_item) != "evicted":
        assert mem.location(hot_item) == "hot"
    # resume from a mid-stream checkpoint: identical counters, memory and migration state at the end
    model_b, adm_b, mig_b = run(tmp_path / "b", shards, save_at=9)
    assert summary(model_b, adm_b, mig_b) == full
    ckpt = torch.load(tmp_path / "b" / "mid.ckpt", weights_only=True)  # tensors and primitives only
    model_c, adm_c, mig_c = run(tmp_path / "c", shards, resume=str(tmp_path / "b" / "mid.ckpt"))
    assert summary(model_c, adm_c, mig_c) == full
    assert any("HeavyHitterAdmission" in k for k in ckpt["callbacks"])


def test_key_modes_and_errors():
    assert keys_to_ids(["0000012", "7"], "int").tolist() == [12, 7]
    h = keys_to_ids(["a-1", "a-1", "b"], "hash")
    assert h[0] == h[1] != h[2] and (h >= 0).all()
    with pytest.raises(ValueError, match="hash"):
        keys_to_ids(["a-1"], "int")
    with pytest.raises(ValueError, match="key_to_id"):
        HeavyHitterAdmission(key_to_id="sha")
    with pytest.raises(ValueError, match="mode"):
        HeavyHitterAdmission({"mode": "prototypes"})
    with pytest.raises(ValueError, match="every_n_batches"):
        TierMigration(every_n_batches=0)
    adm = HeavyHitterAdmission(ADMISSION)
    adm.load_state_dict({})  # a checkpoint written before the callback existed
    assert adm.batches == 0
    mig = TierMigration()
    mig.load_state_dict({})
    assert mig.checks == 0 and len(mig.counter) == 0
