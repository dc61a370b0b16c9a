"""Prequential (test-then-train) scores: ranks against brute force, the ring, and a fit that logs
them before each batch is learned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from luma_pl.bridge.prequential import PrequentialScore, prequential_ranks, prequential_sums


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def _brute_rank(m: np.ndarray, targets: np.ndarray, ring: np.ndarray, i: int) -> int:
    gallery = np.concatenate([targets, ring]) if len(ring) else targets
    own = float(m[i] @ targets[i])
    return 1 + sum(1 for j, x in enumerate(gallery) if j != i and float(m[i] @ x) > own)


@pytest.mark.parametrize("ring_rows", [0, 5, 40])
def test_ranks_equal_brute_force(ring_rows):
    g = torch.Generator().manual_seed(ring_rows)
    m, t = _unit(torch.randn(12, 6, generator=g, dtype=torch.float64)), _unit(torch.randn(12, 6, generator=g,
                                                                                     dtype=torch.float64))
    ring = _unit(torch.randn(ring_rows, 6, generator=g, dtype=torch.float64))
    t[3] = t[7]  # a duplicate target: it does not outrank itself
    got = prequential_ranks(m, t, ring).tolist()
    want = [_brute_rank(m.numpy(), t.numpy(), ring.numpy(), i) for i in range(12)]
    assert got == want
    sums = prequential_sums(m, t, ring, (1, 5))
    ranks = np.array(want)
    assert sums.tolist() == pytest.approx([12, (ranks <= 1).sum(), (ranks <= 5).sum(),
                                           (np.where(ranks <= 5, 1.0 / ranks, 0.0)).sum(), float((m * t).sum())])


def test_the_ring_keeps_the_last_gallery_anchors_and_resumes():
    score = PrequentialScore(dim=3, gallery=5, ks=(1,))
    rows = torch.arange(24, dtype=torch.float32).reshape(8, 3)
    score.push(rows[:3])
    score.push(rows[3:])  # 8 rows through a ring of 5
    kept = {tuple(r) for r in score.ring[: score.filled].tolist()}
    assert score.filled == 5 and kept == {tuple(r) for r in rows[3:].tolist()}
    again = PrequentialScore(dim=3, gallery=5, ks=(1,))
    again.load_state_dict(score.state_dict())
    assert torch.equal(again.ring, score.ring) and (again.pos, again.filled) == (score.pos, score.filled)
    again.load_state_dict({"ring": torch.zeros(2, 4)})  # another dimension: ignored, not a crash
    assert again.filled == 5
    assert score.rates(torch.zeros(4, dtype=torch.float64)) == {}


def test_a_batch_is_scored_by_the_bridge_before_it_learns_from_it():
    """A learned bridge: the logged preq/cosine of a batch is that of the weights before its step."""
    import lightning.pytorch as pl

    from luma_pl.modules import LearnedBridgeModule

    torch.manual_seed(0)
    d_s, d_c, n = 8, 12, 64
    q, _ = torch.linalg.qr(torch.randn(d_c, d_s))
    batches = []
    for _ in range(4):
        s = _unit(torch.randn(n, d_s))
        batches.append({"key": [f"{i}" for i in range(n)], "emb": {"wordllama": s, "minilm": _unit(s @ q.T)},
                        "has": {"wordllama": torch.ones(n, dtype=torch.bool), "minilm": torch.ones(n, dtype=torch.bool)},
                        "skipped": 0})
    module = LearnedBridgeModule(bridge={"kind": "linear", "d_s": d_s, "d_c": d_c, "lr": 0.05},
                                 module={"prequential_gallery": 32, "ks": [1, 5], "stream_queries_k": 0})
    seen = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            s, c = pl_module.pairs(batch)
            with torch.no_grad():
                seen.append(float((pl_module.bridge(s) * c).sum(dim=1).mean()))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen[-1] = (seen[-1], float(trainer.callback_metrics["preq/cosine"]))

    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         callbacks=[Probe()], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert len(seen) == 4
    for before, logged in seen:
        assert logged == pytest.approx(before, abs=1e-5)
    assert seen[-1][1] > seen[0][1]  # and it learns between batches
