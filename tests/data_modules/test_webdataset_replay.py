"""Direct replay of standard WebDataset shards (``StreamReplayDataModule(webdataset=...)``): read by
the webdataset library in the replay's workers, equal batch counts per rank, every event replayed
once or counted, exact resume, and a Lightning fit that encodes the raw media on the fly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from wds_helpers import img2dataset_shards

from data_modules import ReplayConfig, StreamReplayDataModule, StreamReplayDataset
from data_modules.webdataset_source import WebDatasetConfig


def _cfg(tmp_path, **kw):
    return ReplayConfig(root="", batch_size=kw.pop("batch_size", 4), num_workers=kw.pop("num_workers", 0),
                        webdataset=WebDatasetConfig(urls=str(tmp_path / "wds" / "{00000..00002}.tar"), **kw))


def _keys(batches):
    return [k for b in batches for k in b["key"]]


def test_every_sample_is_replayed_once_or_counted(tmp_path):
    good = img2dataset_shards(tmp_path / "wds", marker=tmp_path / "pwned")
    ds = StreamReplayDataset(_cfg(tmp_path))
    batches = list(ds)
    assert _keys(batches) == good and len(batches) == ds.batches_per_pass()
    assert sum(b["events_skipped"] for b in batches) == 4 and not (tmp_path / "pwned").exists()
    reasons = {}
    for b in batches:
        for code, n in b["skip_reasons"].items():
            reasons[code] = reasons.get(code, 0) + n
    assert reasons == {"bad_member": 1, "corrupt_sample": 2, "bad_json": 1}
    b0 = batches[0]
    assert b0["media"]["jpg"][0].size == (40, 40) and b0["media"]["txt"][0] == "a photo of thing 0"
    assert b0["ts"].tolist() == [0, 1, 2, 3]  # the stream position
    ts = [t for b in batches for t in b["ts"].tolist()]
    assert ts == list(range(12)) + list(range(16, 22))  # shard 1 holds 4 hostile samples after its 6 good ones
    by_field = list(StreamReplayDataset(_cfg(tmp_path, ts_field="ts")))
    assert [t for b in by_field for t in b["ts"].tolist()] == [1000 + 10 * i for i in range(18)]


def test_two_ranks_split_it_with_equal_batch_counts_and_resume_exactly(tmp_path):
    good = img2dataset_shards(tmp_path / "wds")
    ranks = [StreamReplayDataset(_cfg(tmp_path, batch_size=3), rank=r, world_size=2) for r in range(2)]
    per_rank = [list(ds) for ds in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == ranks[0].batches_per_pass()
    assert sorted(_keys(per_rank[0]) + _keys(per_rank[1])) == sorted(good)
    full = list(StreamReplayDataset(_cfg(tmp_path, batch_size=3)))
    for k in (1, 3, len(full) - 1):
        tail = list(StreamReplayDataset(_cfg(tmp_path, batch_size=3), resume_batches=k))
        assert _keys(tail) == _keys(full[k:])


def test_a_remote_spec_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="needs local shards.*build_shards webdataset"):
        StreamReplayDataset(ReplayConfig(root="", webdataset=WebDatasetConfig(urls="pipe:curl -s http://x/{0..3}.tar")))


@pytest.mark.slow
def test_fit_encodes_the_raw_media_on_the_fly(tmp_path):
    """ProcrustesBridgeModule with media_keys {clip: jpg, clip_text: txt} and a tiny open_clip: the
    bridge learns caption -> image from pairs encoded in the training step; W equals the batch
    oracle on the encoder's own vectors of the same pairs (more pairs than dimensions, so the
    orthogonal solution is unique)."""
    import lightning.pytorch as pl
    from tiny_encoders import TINY_CLIP

    from luma_pl.encoders import OpenClipEncoder
    from luma_pl.modules import ProcrustesBridgeModule

    good = img2dataset_shards(tmp_path / "wds", shards=3, per_shard=14)  # 41 pairs > d: a unique W
    enc = OpenClipEncoder(model_cfg=TINY_CLIP, precision="fp32")
    d = enc.dim
    model = ProcrustesBridgeModule(bridge=dict(d_s=d, d_c=d, refresh_every=8),
                                   module=dict(source_space="clip_text", canonical_space="clip", query_space="clip_text",
                                               item_space="clip", media_keys={"clip": "jpg", "clip_text": "txt"}),
                                   encoders={"clip": enc, "clip_text": enc})
    dm = StreamReplayDataModule(batch_size=4, webdataset=WebDatasetConfig(urls=str(tmp_path / "wds")))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert dm.events_seen == len(good) == 42 and dm.events_skipped == 4
    assert int(model.bridge.pairs_total) == 41  # sample 4 has no caption
    # the oracle from the same pairs, encoded here
    ds = StreamReplayDataset(ReplayConfig(root="", batch_size=64, webdataset=WebDatasetConfig(urls=str(tmp_path / "wds"))))
    (batch,) = [b for b in ds if len(b["key"])]
    keep = [i for i, t in enumerate(batch["media"]["txt"]) if t]
    s = enc.encode_text([batch["media"]["txt"][i] for i in keep]).double()
    c = enc.encode_image([batch["media"]["jpg"][i] for i in keep]).double()
    U, _, Vt = torch.linalg.svd(c.T @ s)
    # float32 encodes in batches of 4 (training) vs 42 (here) round differently: ~1e-5 after the SVD
    np.testing.assert_allclose(model.bridge.W.double().numpy(), (U @ Vt).numpy(), atol=1e-4)
