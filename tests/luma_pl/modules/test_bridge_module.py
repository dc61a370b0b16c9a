"""The bridge LightningModules under a real Trainer on synthetic replay-contract batches."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from luma_pl.modules import LearnedBridgeModule, ProcrustesBridgeModule

D_S, D_C = 8, 12


class SyntheticStream:
    """A resumable iterable of replay-contract batches (Lightning saves/restores its state_dict).

    Batch i is a function of (seed, i) only: source s, canonical c = Q s + noise, queries from the
    same hidden vector; some rows lack a space, every 5th batch is a B = 0 padding batch.
    """

    def __init__(self, n_batches: int = 12, batch: int = 16, seed: int = 0) -> None:
        self.n, self.B, self.seed, self.pos = n_batches, batch, seed, 0
        g = torch.Generator().manual_seed(1000)  # one planted map for train and val streams
        self.Q = torch.linalg.qr(torch.randn(D_C, D_S, generator=g))[0]  # (d_c, d_s) semi-orthogonal

    def batch(self, i: int) -> dict:
        B = 0 if i % 5 == 4 else self.B
        g = torch.Generator().manual_seed(self.seed * 10_000 + i)
        s = torch.nn.functional.normalize(torch.randn(B, D_S, generator=g), dim=-1)
        c = torch.nn.functional.normalize(s @ self.Q.T + 0.05 * torch.randn(B, D_C, generator=g), dim=-1)
        qs = torch.nn.functional.normalize(s + 0.05 * torch.randn(B, D_S, generator=g), dim=-1)
        has_s = torch.rand(B, generator=g) > 0.1
        has_c = torch.rand(B, generator=g) > 0.1
        return {
            "key": [f"{self.seed}-{i}-{j}" for j in range(B)], "ts": torch.arange(B) + i * self.B,
            "topic": [""] * B,
            "emb": {"wordllama": s * has_s[:, None], "minilm": c * has_c[:, None], "query_wordllama": qs},
            "has": {"wordllama": has_s, "minilm": has_c, "query_wordllama": torch.ones(B, dtype=torch.bool)},
            "media": {}, "skipped": 0, "padding": B == 0,
        }

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if self.pos >= self.n:  # a new epoch (Lightning stops after len() batches, never exhausting us)
            self.pos = 0
        while self.pos < self.n:
            i = self.pos
            self.pos += 1
            yield self.batch(i)

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = int(state["pos"])


def _trainer(tmp_path, **kw):
    kw.setdefault("max_epochs", 1)
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, **kw)


class SaveAt(Callback):
    """Checkpoint after given global batch numbers. (Procrustes has no optimizer, so global_step,
    which counts optimizer steps, stays 0 and ModelCheckpoint(every_n_train_steps) never fires.)"""

    def __init__(self, path, at):
        self.path, self.at, self.seen = path, set(at), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen in self.at:
            trainer.save_checkpoint(self.path / f"batch={self.seen}.ckpt")


def _procrustes(**bridge):
    cfg = dict(d_s=D_S, d_c=D_C, refresh_every=25, lam=0.97, center=True, sync_every=3)
    cfg.update(bridge)
    return ProcrustesBridgeModule(bridge=cfg)


def test_procrustes_module_fits_and_validates(tmp_path):
    model = _procrustes()
    trainer = _trainer(tmp_path, enable_checkpointing=False)
    trainer.fit(model, train_dataloaders=SyntheticStream(12), val_dataloaders=SyntheticStream(3, seed=9))
    br = model.bridge
    assert int(br.refreshes) >= 3 and int(br.pairs_total) == br.pairs_seen
    assert math.isfinite(br.epsilon()) and br.epsilon() > 0
    m = trainer.callback_metrics
    assert float(m["val/recall@10"]) > 0.9 and float(m["val/recall@1"]) > 0.5, dict(m)
    assert 0 < float(m["val/mrr@10"]) <= 1 and "val/ndcg@10" in m
    # the fitted W recovers the planted map (up to the noise)
    Q = SyntheticStream().Q.double()
    assert float(torch.linalg.matrix_norm(br.W - Q, ord=2)) < 0.2


def test_procrustes_resume_mid_stream_is_exact(tmp_path):
    full = _procrustes()
    ckpt = SaveAt(tmp_path, [5, 16])
    _trainer(tmp_path, max_epochs=2, callbacks=[ckpt]).fit(full, train_dataloaders=SyntheticStream(12))
    mid = tmp_path / "batch=16.ckpt"  # epoch 2, batch 4 of 12: mid-stream, mid sync window
    state = torch.load(mid, weights_only=True)  # plain tensors and primitives only
    assert int(state["state_dict"]["bridge.pairs_at_refresh"]) > 0
    resumed = _procrustes()
    _trainer(tmp_path, max_epochs=2, enable_checkpointing=False).fit(
        resumed, train_dataloaders=SyntheticStream(12), ckpt_path=str(mid), weights_only=True
    )
    for name in ("W", "A", "b", "A_prev", "A_ref", "total_M", "steps", "pairs_total", "refreshes"):
        a, b = getattr(full.bridge, name), getattr(resumed.bridge, name)
        assert torch.allclose(a.double(), b.double(), atol=1e-12, rtol=0), name
    # and the restored bridge is the saved one, field by field
    fresh = _procrustes(lam=0.5)
    fresh.load_state_dict(state["state_dict"])
    assert fresh.bridge.config.lam == 0.97 and int(fresh.bridge.steps) == 16


def test_resume_catches_a_wrong_stream_position(tmp_path):
    # the resume test must be able to fail: restart the stream from 0 instead of its saved position
    full = _procrustes()
    ckpt = SaveAt(tmp_path, [5])
    _trainer(tmp_path, callbacks=[ckpt]).fit(full, train_dataloaders=SyntheticStream(12))

    class Forgetful(SyntheticStream):
        def load_state_dict(self, state):
            self.pos = 0

    resumed = _procrustes()
    _trainer(tmp_path, enable_checkpointing=False).fit(
        resumed, train_dataloaders=Forgetful(12), ckpt_path=str(tmp_path / "batch=5.ckpt")
    )
    assert not torch.allclose(full.bridge.W, resumed.bridge.W, atol=1e-9)


@pytest.mark.parametrize("kind", ["orthogonal", "mlp"])
def test_learned_module_trains_and_validates(tmp_path, kind):
    torch.manual_seed(0)
    model = LearnedBridgeModule(bridge=dict(kind=kind, d_s=D_S, d_c=D_C, hidden=16, lr=0.05))
    trainer = _trainer(tmp_path, max_epochs=4, enable_checkpointing=False)
    trainer.fit(model, train_dataloaders=SyntheticStream(12), val_dataloaders=SyntheticStream(3, seed=9))
    m = trainer.callback_metrics
    assert float(m["val/recall@10"]) > 0.8, dict(m)
    assert float(m["train/drift_from_reference"]) > 0
    path = tmp_path / "learned.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)
    # "_class_path" is for LightningCLI (load_from_checkpoint filters it out the same way)
    again = LearnedBridgeModule(**{k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")})
    again.load_state_dict(state["state_dict"])
    x = torch.randn(4, D_S)
    assert torch.equal(again.bridge(x), model.bridge(x))


def test_raw_media_path_encodes_on_the_fly():
    class FakeText(torch.nn.Module):
        dim = D_C

        def encode_text(self, texts):
            return torch.nn.functional.normalize(torch.stack([torch.full((D_C,), float(len(t))) for t in texts]), dim=-1)

    model = ProcrustesBridgeModule(bridge=dict(d_s=D_S, d_c=D_C), module=dict(media_keys={"minilm": "txt"}),
                                   encoders={"minilm": FakeText()})
    batch = {"key": ["a", "b", "c"], "emb": {"wordllama": torch.randn(3, D_S)},
             "has": {"wordllama": torch.ones(3, dtype=torch.bool)}, "media": {"txt": ["xx", None, "yyy"]}}
    s, c = model.pairs(batch)
    assert s.shape == (2, D_S) and c.shape == (2, D_C)
    with pytest.raises(ValueError, match="encoders has"):
        ProcrustesBridgeModule(bridge=dict(d_s=D_S, d_c=D_C), module=dict(media_keys={"minilm": "txt"}))


class RankShard(SyntheticStream):
    """Rank r replays batches r, r + 2, ... (the replay datamodule splits a stream the same way)."""

    def __iter__(self):
        import torch.distributed as dist

        for i in range(dist.get_rank(), self.n, 2):
            yield self.batch(i)

    def __len__(self) -> int:
        return self.n // 2


@pytest.mark.ddp
def test_procrustes_module_two_rank_lightning_ddp_equals_one_process(tmp_path):
    from luma_pl.bridge import StreamingProcrustes
    from luma_pl.modules import ClosedFormDDPStrategy

    cfg = dict(d_s=D_S, d_c=D_C, refresh_every=25, lam=0.97, center=True)
    model = ProcrustesBridgeModule(bridge=cfg)
    trainer = Trainer(accelerator="cpu", devices=2, strategy=ClosedFormDDPStrategy(start_method="spawn"),
                      max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False,
                      default_root_dir=tmp_path)
    trainer.fit(model, train_dataloaders=RankShard(12), val_dataloaders=RankShard(4, seed=9))
    # one process, global step t = batches 2t and 2t+1 together
    single, stream = StreamingProcrustes(**cfg), SyntheticStream(12)
    for t in range(6):
        parts = [stream.batch(2 * t + r) for r in (0, 1)]
        both = [b["has"]["wordllama"] & b["has"]["minilm"] for b in parts]
        single.fit_step(torch.cat([b["emb"]["wordllama"][m] for b, m in zip(parts, both, strict=False)]),
                        torch.cat([b["emb"]["minilm"][m] for b, m in zip(parts, both, strict=False)]))
    assert int(model.bridge.refreshes) == int(single.refreshes) >= 3
    assert float((model.bridge.W - single.W).abs().max()) <= 1e-9
    assert float(trainer.callback_metrics["val/queries"]) > 20  # both ranks' queries were scored


def test_strategy_process_group_backend_per_device():
    # CPU tensors cross ranks in the memory/admission/replay collectives: on CUDA the group must
    # carry them over gloo beside NCCL; on CPU it is plain gloo; an explicit choice is kept
    import torch

    from luma_pl.modules import ClosedFormDDPStrategy

    gpu = ClosedFormDDPStrategy(parallel_devices=[torch.device("cuda", 0)])
    assert gpu._get_process_group_backend() == "cpu:gloo,cuda:nccl"
    cpu = ClosedFormDDPStrategy(parallel_devices=[torch.device("cpu")])
    assert cpu._get_process_group_backend() == "gloo"
    own = ClosedFormDDPStrategy(parallel_devices=[torch.device("cuda", 0)], process_group_backend="nccl")
    assert own._get_process_group_backend() == "nccl"
