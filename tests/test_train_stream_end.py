"""train.py at the end of a stream: the last pairs are in the final W (a batch size that does not
divide ``refresh_every`` once left them out), and a stream of anchor pairs only (no validation
queries) trains, says that nothing was validated and still writes its final checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.shard_writer import write_blocks
from train import cli_main

DEFAULT = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def _pairs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, 256)).astype(np.float32)
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    q, _ = np.linalg.qr(rng.standard_normal((384, 256)))
    c = s @ q.T + 0.3 * rng.standard_normal((n, 384))
    c[n // 2 :] += 0.5 * rng.standard_normal((1, 384))  # the stream drifts: its tail moves W
    return s, (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)


def _fit(tmp_path, shards, batch_size: int, extra=()):
    return cli_main(["fit", "--config", str(DEFAULT), "--data.root", str(shards),
                     "--data.batch_size", str(batch_size),
                     "--trainer.default_root_dir", str(tmp_path / "run"),
                     "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                     "--trainer.logger.save_dir", str(tmp_path / "run"),
                     "--trainer.callbacks.dirpath", str(tmp_path / "run" / "checkpoints"),
                     "--model.init_args.memory.pq_m", "64", "--trainer.enable_progress_bar", "false", *extra])


@pytest.mark.parametrize("batch_size", [100, 48])
def test_final_w_equals_the_batch_oracle_when_batches_do_not_divide_refresh_every(tmp_path, batch_size):
    n = 650  # refresh_every = 256 (default.yaml): 650 - 512 pairs arrive after the last scheduled refresh
    s, c = _pairs(n)
    write_blocks(tmp_path / "shards", keys=[f"{i:05d}" for i in range(n)], ts=np.arange(n),
                 emb={"wordllama": s, "minilm": c, "query_wordllama": s}, block_events=50, events_per_shard=200)
    cli = _fit(tmp_path, tmp_path / "shards", batch_size)
    M = c.astype(np.float64).T @ s.astype(np.float64)  # (d_c, d_s) cross-covariance, λ = 1
    U, _, Vt = np.linalg.svd(M, full_matrices=False)
    W = cli.model.bridge.W.double().numpy()
    assert int(cli.model.bridge.pairs_total) == n
    assert np.linalg.norm(W - U @ Vt, 2) <= 1e-9
    # the final checkpoint holds the same W
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert torch.equal(ckpt["state_dict"]["bridge.W"], cli.model.bridge.W)


def test_fit_on_anchor_only_shards_warns_and_writes_the_final_checkpoint(tmp_path):
    n = 300
    s, c = _pairs(n, seed=1)
    write_blocks(tmp_path / "shards", keys=[f"{i:05d}" for i in range(n)], ts=np.arange(n),
                 emb={"wordllama": s, "minilm": c}, block_events=50, events_per_shard=100)
    with pytest.warns(UserWarning, match="have no emb\\['query_wordllama'\\]"):
        cli = _fit(tmp_path, tmp_path / "shards", 64)
    assert int(cli.model.bridge.pairs_total) == n
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert not any(k.startswith("val/recall") for k in cli.trainer.callback_metrics)


def test_fit_on_a_stream_with_repeated_keys_and_hostile_rows_finishes(tmp_path):
    """Issue 13: a shard reusing earlier keys killed train.py fit ("ids [...] already in the
    memory"), and a finite row of norm 3e38 killed it inside TieredMemory.insert. Both now finish:
    the repeats are not inserted twice, the huge row is masked and counted."""
    n = 200
    s, c = _pairs(n, seed=2)
    c[7] = 1e37  # finite, norm ~2e38
    keys = [f"{i:05d}" for i in range(n // 2)] * 2  # the second half repeats the first half's keys
    write_blocks(tmp_path / "shards", keys=keys, ts=np.arange(n),
                 emb={"wordllama": s, "minilm": c, "query_wordllama": s}, block_events=50, events_per_shard=100)
    cli = _fit(tmp_path, tmp_path / "shards", 50)
    dm = cli.datamodule
    assert dm.events_seen == n and dm.skip_reasons.get("bad_embedding") == 1
    memory = cli.model.memory
    assert len(memory) <= n // 2 and memory.audit()
    assert int(cli.model.bridge.pairs_total) == n - 1  # every pair with both rows, the masked one excepted


@pytest.mark.parametrize("overlay", ["ablation_count_min.yaml", "ablation_prototypes.yaml"])
def test_fit_with_an_admission_overlay_shared_with_evaluate(tmp_path, overlay):
    """The ablation overlays are one top-level ``admission`` group for train.py and evaluate.py."""
    from callbacks.heavy_hitter_admission import HeavyHitterAdmission

    n = 300
    s, c = _pairs(n, seed=3)
    write_blocks(tmp_path / "shards", keys=[f"{i:05d}" for i in range(n)], ts=np.arange(n),
                 emb={"wordllama": s, "minilm": c, "query_wordllama": s}, block_events=50, events_per_shard=100)
    cli = _fit(tmp_path, tmp_path / "shards", 50, ["--config", str(DEFAULT.with_name(overlay))])
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, HeavyHitterAdmission)]
    assert cb.cfg.mode == ("prototypes" if "prototypes" in overlay else "items")
    assert cb.cfg.counter.policy == ("space_saving" if "prototypes" in overlay else "count_min")
    assert cb.pipeline is not None and cli.model.memory.audit()
