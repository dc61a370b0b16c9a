"""Learned bridges with a Procrustes prior: started from it, pulled toward it, refused without one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as tf

from luma_pl.bridge.learned import LearnedBridge, LearnedBridgeConfig
from luma_pl.bridge.procrustes import ProcrustesConfig, StreamingProcrustes
from luma_pl.configuration import ConfigError


def _pairs(n=400, d_s=8, d_c=12, noise=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = tf.normalize(torch.randn(n, d_s, generator=g), dim=1)
    q, _ = torch.linalg.qr(torch.randn(d_c, d_s, generator=g))
    return s, tf.normalize(s @ q.T + noise * torch.randn(n, d_c, generator=g), dim=1)


def _procrustes(s, c):
    p = StreamingProcrustes(ProcrustesConfig(d_s=s.shape[1], d_c=c.shape[1], refresh_every=0))
    p.fit_step(s, c)
    p.refresh()
    return p


@pytest.mark.parametrize("kind", ["linear", "orthogonal", "mlp"])
def test_a_bridge_initialised_from_its_prior_maps_as_procrustes_does(kind):
    s, c = _pairs()
    p = _procrustes(s, c)
    b = LearnedBridge(LearnedBridgeConfig(kind=kind, d_s=8, d_c=12, prior="procrustes"))
    assert b.set_prior(p.A) is True
    torch.testing.assert_close(b(s), p(s), atol=1e-5, rtol=0)
    assert b.set_prior(p.A * 0.5) is False  # later priors only move the pull target
    torch.testing.assert_close(b.prior_map, (p.A * 0.5).float())


def test_the_pull_keeps_the_map_near_the_prior():
    s, c = _pairs(noise=0.6)
    p = _procrustes(s, c)
    moved = {}
    for weight in (0.0, 10.0):
        torch.manual_seed(0)
        b = LearnedBridge(LearnedBridgeConfig(kind="linear", d_s=8, d_c=12, prior="procrustes", prior_weight=weight,
                                              lr=0.05))
        b.set_prior(p.A)
        for _ in range(60):
            b.fit_step(s, c)
        moved[weight] = float((b.linear_part() - p.A).norm())
    assert moved[10.0] < 0.25 * moved[0.0], moved


def test_a_pull_without_a_prior_and_a_bad_prior_are_refused():
    with pytest.raises(ConfigError, match="prior_weight"):
        LearnedBridgeConfig(prior_weight=0.1).validate()
    b = LearnedBridge(LearnedBridgeConfig(kind="linear", d_s=8, d_c=12, prior="procrustes"))
    with pytest.raises(ValueError, match=r"expected a finite \(12, 8\) map"):
        b.set_prior(torch.full((12, 8), float("nan")))
    with pytest.raises(ValueError, match="prior='none'"):
        LearnedBridge(LearnedBridgeConfig(kind="linear", d_s=8, d_c=12)).set_prior(torch.zeros(12, 8))


def test_the_module_feeds_its_streaming_procrustes_to_the_bridge():
    import lightning.pytorch as pl

    from luma_pl.modules import LearnedBridgeModule

    s, c = _pairs(n=512)
    batches = [{"key": [str(i) for i in range(64)], "emb": {"wordllama": s[i:i + 64], "minilm": c[i:i + 64]},
                "has": {"wordllama": torch.ones(64, dtype=torch.bool), "minilm": torch.ones(64, dtype=torch.bool)},
                "skipped": 0} for i in range(0, 512, 64)]
    module = LearnedBridgeModule(bridge={"kind": "linear", "d_s": 8, "d_c": 12, "prior": "procrustes",
                                         "prior_refresh_every": 128, "prior_weight": 0.01},
                                 module={"stream_queries_k": 0, "prequential_gallery": 64})
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert int(module.prior_bridge.refreshes) == 4 and int(module.bridge.has_prior) == 1
    torch.testing.assert_close(module.bridge.prior_map, module.prior_bridge.A.float())
    # and a checkpoint of it reloads with weights_only (the prior's buffers are tensors)
    state = module.state_dict()
    again = LearnedBridgeModule(bridge=module.bridge.config.to_dict(), module={"stream_queries_k": 0})
    again.load_state_dict(state)
    torch.testing.assert_close(again.bridge.prior_map, module.bridge.prior_map)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_a_warm_up_pass_ends_with_the_map_equal_to_the_whole_pass_procrustes(kind):
    import lightning.pytorch as pl

    from luma_pl.modules import LearnedBridgeModule

    s, c = _pairs(n=512)
    batches = [{"key": [str(i) for i in range(64)], "emb": {"wordllama": s[i:i + 64], "minilm": c[i:i + 64]},
                "has": {"wordllama": torch.ones(64, dtype=torch.bool), "minilm": torch.ones(64, dtype=torch.bool)},
                "skipped": 0} for i in range(0, 512, 64)]
    module = LearnedBridgeModule(bridge={"kind": kind, "d_s": 8, "d_c": 12, "prior": "procrustes",
                                         "prior_refresh_every": 192, "prior_warmup_epochs": 1},
                                 module={"stream_queries_k": 0})
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    whole = _procrustes(s, c)  # every pair of the pass (the flush at the end of the pass adds the tail)
    torch.testing.assert_close(module.bridge(s), whole(s).float(), atol=1e-4, rtol=0)


def test_the_negative_queue_adds_earlier_anchors_as_negatives_only():
    s, c = _pairs(n=96)
    torch.manual_seed(0)
    b = LearnedBridge(LearnedBridgeConfig(kind="linear", d_s=8, d_c=12, negative_queue=48))
    b.train()
    b.loss(s[:32], c[:32])  # fills 32 rows
    b.loss(s[32:64], c[32:64])  # 48 rows: 16 of the first batch overwritten
    assert int(b.queue_filled) == 48
    torch.testing.assert_close(b.queue[:16], tf.normalize(c[48:64], dim=1))  # wrapped around
    b.eval()  # no enqueue outside training
    got, _ = b.loss(s[64:], c[64:])
    with torch.no_grad():
        q, k = b(s[64:]), tf.normalize(c[64:], dim=1)
        scale = b.logit_scale()
        items = torch.cat([k, b.queue])
        t = torch.arange(32)
        want = (tf.cross_entropy(scale * q @ items.T, t, reduction="sum")
                + tf.cross_entropy(scale * k @ q.T, t, reduction="sum")) / (2 * 32)
    torch.testing.assert_close(got.detach(), want, atol=1e-5, rtol=1e-5)
    assert int(b.queue_filled) == 48
