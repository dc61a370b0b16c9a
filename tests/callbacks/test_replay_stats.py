"""A truncated shard inside a Lightning fit: the run finishes, the loss is counted and logged."""

from __future__ import annotations

import csv
import tarfile

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import CSVLogger

from callbacks.replay_stats import ReplayStatsLogger
from data_modules import StreamReplayDataModule
from data_modules.shard_format import list_shards
from data_modules.shard_writer import write_blocks
from luma_pl.modules.bridge_module import ProcrustesBridgeModule


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_truncated_shard_counted_and_logged(tmp_path):
    rng = np.random.default_rng(0)
    n = 96
    write_blocks(tmp_path / "shards", keys=[f"{i:05d}" for i in range(n)], ts=np.arange(n),
                 emb={"src": _unit(rng, n, 8), "dst": _unit(rng, n, 8)}, block_events=16, events_per_shard=32)
    shards = list_shards(tmp_path / "shards")
    assert len(shards) == 3
    with tarfile.open(shards[1]) as tf:
        last = tf.getmembers()[-1]  # a member of the shard's second block
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: last.offset_data + 10])  # cut mid-member: that block is lost

    dm = StreamReplayDataModule(root=str(tmp_path / "shards"), batch_size=16)
    module = ProcrustesBridgeModule(bridge={"d_s": 8, "d_c": 8, "refresh_every": 32},
                                    module={"source_space": "src", "canonical_space": "dst",
                                            "query_space": "src", "item_space": "dst"})
    stats = ReplayStatsLogger(every_n_batches=1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=CSVLogger(tmp_path, name="log"),
                         callbacks=[stats], enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         log_every_n_steps=1)
    trainer.fit(module, datamodule=dm)

    # shards 0 and 2 replay whole (64 events); shard 1 keeps only what precedes the cut
    assert stats.events_seen == 64 + 16
    assert stats.skipped_total >= 1
    assert int(module.bridge.pairs_total) == stats.events_seen
    with open(trainer.logger.log_dir + "/metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("replay/skipped_total")]
    assert rows, "replay/skipped_total was never logged"
    assert float(rows[-1]["replay/skipped_total"]) == stats.skipped_total
    assert float(rows[-1]["replay/events_seen"]) == stats.events_seen
    # per event: the lost block's 16 rows are counted, and the reasons say why
    assert stats.events_skipped == 16 and float(rows[-1]["replay/events_skipped"]) == 16
    assert stats.events_seen + stats.events_skipped == n
    assert float(rows[-1]["replay/skipped/stale_shard"]) == 1 == stats.reasons["stale_shard"]
    assert stats.reasons["missing_events"] == 1
