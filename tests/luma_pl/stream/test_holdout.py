"""The held-out slice of the anchor stream: never learned from, the only queries validation asks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as tf

from luma_pl.configuration import ConfigError
from luma_pl.stream.holdout import holdout_mask
from luma_pl.stream.ids import event_ids


def _batch(n=400, d_s=8, d_c=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = tf.normalize(torch.randn(n, d_s, generator=g), dim=1)
    q, _ = torch.linalg.qr(torch.randn(d_c, d_s, generator=g))
    keys = [f"k{i:05d}" for i in range(n)]
    ones = torch.ones(n, dtype=torch.bool)
    return {"key": keys, "id": torch.from_numpy(event_ids(keys)), "ts": torch.arange(n),
            "topic": [f"t{i % 20}" for i in range(n)],
            "emb": {"wordllama": s, "minilm": tf.normalize(s @ q.T, dim=1),
                    "query_wordllama": tf.normalize(s + 0.05 * torch.randn(n, d_s, generator=g), dim=1)},
            "has": {"wordllama": ones, "minilm": ones, "query_wordllama": ones}, "skipped": 0}


def test_the_three_slices():
    b = _batch(4000)
    by_hash = holdout_mask(b, "hash", 0.1)
    assert 0.08 < by_hash.float().mean() < 0.12
    assert torch.equal(by_hash, holdout_mask({k: b[k] for k in ("key", "ts", "topic")}, "hash", 0.1))  # from keys too
    by_topic = holdout_mask(b, "topic", 0.3)
    for t in {b["topic"][i] for i in range(4000)}:  # whole topics: all or none of a topic's events
        rows = [i for i in range(4000) if b["topic"][i] == t]
        assert len({bool(by_topic[i]) for i in rows}) == 1
    assert torch.equal(holdout_mask(b, "time", after_ts=3500), b["ts"] >= 3500)
    assert not holdout_mask(b, "none").any()


def test_held_out_pairs_are_not_learned_and_are_the_only_validation_queries():
    import lightning.pytorch as pl

    from luma_pl.modules import ProcrustesBridgeModule

    batch = _batch()
    held = holdout_mask(batch, "hash", 0.25)
    module = ProcrustesBridgeModule(bridge={"d_s": 8, "d_c": 12, "refresh_every": 64},
                                    module={"holdout_by": "hash", "holdout_fraction": 0.25, "stream_queries_k": 0,
                                            "prequential_gallery": 0})
    s, c = module.pairs(batch)
    assert len(s) == int((~held).sum()) > 0
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         num_sanity_val_steps=0)
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert int(module.bridge.pairs_total) == int((~held).sum())
    assert float(trainer.callback_metrics["val/queries"]) == float(held.sum())


def test_a_time_slice_needs_its_ts():
    from luma_pl.modules.common import BridgeModuleConfig

    with pytest.raises(ConfigError, match="holdout_after_ts"):
        BridgeModuleConfig(holdout_by="time").validate()
    with pytest.raises(ConfigError, match="holdout_fraction"):
        BridgeModuleConfig(holdout_by="hash", holdout_fraction=1.5).validate()
