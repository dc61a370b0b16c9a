"""Standard WebDataset shards (img2dataset-style ``00000.tar`` with jpg/txt/json, CLAP-style flac/json)
read with the webdataset library: safe decoders, a pickle-bearing sample refused and counted (its
code never runs), every skip counted by reason, ts/topic/caption from configured fields, and
``build_shards webdataset`` writing block shards with batched encoding equal to one file per forward."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from tar_helpers import add_member
from wds_helpers import img2dataset_shards

from data_modules import ReaderConfig, ReplayConfig, StreamReplayDataset
from data_modules.webdataset_source import WebDatasetConfig, WebDatasetSkips, iter_webdataset, resolve_urls


def test_samples_are_decoded_safely_and_every_skip_is_counted(tmp_path):
    good = img2dataset_shards(tmp_path / "wds", marker=tmp_path / "pwned")
    skips = WebDatasetSkips()
    cfg = WebDatasetConfig(urls=str(tmp_path / "wds" / "{00000..00002}.tar"), ts_field="ts", topic_field="topic")
    samples = list(iter_webdataset(cfg, skips))
    assert [s.key for s in samples] == good
    assert skips.counts == {"refused_entry": 1, "corrupt_sample": 1, "bad_json": 1, "no_content": 1}
    assert not (tmp_path / "pwned").exists()  # the pickle was never unpickled
    s0 = samples[0]
    assert s0.ts == 1000 and s0.topic == "t0" and s0.caption == "a photo of thing 0" and s0.image.size == (40, 40)
    assert s0.meta["url"] == "http://x/0" and s0.url.endswith("00000.tar")
    assert samples[4].caption is None
    # without ts_field, ts is the position in the stream (skipped samples keep their place)
    by_pos = list(iter_webdataset(WebDatasetConfig(urls=str(tmp_path / "wds")), WebDatasetSkips()))
    assert [s.ts for s in by_pos[:12]] == list(range(12)) and by_pos[12].ts == 16  # 4 hostile samples before it
    # a ts field of the wrong type is a counted bad_ts skip naming the fields found
    bad = WebDatasetSkips()
    assert list(iter_webdataset(WebDatasetConfig(urls=str(tmp_path / "wds"), ts_field="url"), bad)) == []
    assert bad.counts["bad_ts"] == len(good) and "fields found" in bad.examples["bad_ts"][0]


def test_patterns_that_match_nothing_say_what_is_there(tmp_path):
    img2dataset_shards(tmp_path / "wds", shards=2)
    assert len(resolve_urls(str(tmp_path / "wds"))) == 2
    with pytest.raises(FileNotFoundError, match="1 of 3 shard\\(s\\) do not exist.*00002.tar.*holds \\['00000.tar', "
                                                "'00001.tar'\\]"):
        resolve_urls(str(tmp_path / "wds" / "{00000..00002}.tar"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(FileNotFoundError, match="holds no \\*.tar shards \\(it holds \\['readme.md'\\]\\)"):
        resolve_urls(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="urls"):
        WebDatasetConfig.from_dict({"urls": ""})
    with pytest.raises(ValueError, match="never a pickle-based one"):
        list(iter_webdataset(WebDatasetConfig(urls=str(tmp_path / "wds"), image_exts=("jpg", "pkl")), WebDatasetSkips()))


def test_an_unreadable_shard_is_counted_and_the_rest_replays(tmp_path):
    good = img2dataset_shards(tmp_path / "wds", shards=2)
    (tmp_path / "wds" / "00001.tar").write_bytes(b"\x00garbage" * 100)
    skips = WebDatasetSkips()
    keys = [s.key for s in iter_webdataset(WebDatasetConfig(urls=str(tmp_path / "wds")), skips)]
    assert keys == good[:6] and skips.counts["unreadable_shard"] >= 1


def _build(tmp_path, src, out, batch_size, encoders):
    from data_modules.build_shards import main

    return main(["webdataset", "--src", str(src), "--out", str(out), "--batch-size", str(batch_size),
                 "--ts-field", "ts", "--topic-field", "topic", "--no-progress", "--encoders", *encoders])


def test_build_shards_encodes_in_batches_equal_to_one_file_per_forward(tmp_path, capsys):
    from tiny_encoders import TINY_CLIP

    from luma_pl.encoders import OpenClipEncoder

    good = img2dataset_shards(tmp_path / "wds")
    ckpt = tmp_path / "tiny_clip.pt"  # one set of random weights for both builds
    torch.save(OpenClipEncoder(model_cfg=TINY_CLIP, precision="fp32").model.state_dict(), ckpt)
    clip = json.dumps({"kind": "clip", "model_cfg": TINY_CLIP, "path": str(ckpt), "precision": "fp32"})
    assert _build(tmp_path, tmp_path / "wds", tmp_path / "b4", 4, [clip]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events"] == len(good) and report["batches"] == 5
    assert report["skipped"]["by_reason"] == {"refused_entry": 1, "corrupt_sample": 1, "bad_json": 1, "no_content": 1}
    assert report["spaces"] == {"clip": 24, "clip_text": 24} and report["encode_items_per_s"] > 0
    assert _build(tmp_path, tmp_path / "wds", tmp_path / "b1", 1, [clip]) == 0
    capsys.readouterr()
    read = {}
    for name in ("b4", "b1"):
        ds = StreamReplayDataset(ReplayConfig(root=str(tmp_path / name), batch_size=32,
                                              reader=ReaderConfig(decode_media=False)))
        batches = list(ds)
        assert sum(b["events_skipped"] for b in batches) == 0
        read[name] = {"clip": np.concatenate([b["emb"]["clip"].numpy() for b in batches]),
                      "text": np.concatenate([b["emb"]["clip_text"].numpy() for b in batches]),
                      "has_text": np.concatenate([b["has"]["clip_text"].numpy() for b in batches])}
        keys = [k for b in batches for k in b["key"]]
        assert keys == good and [t for b in batches for t in b["ts"].tolist()] == [1000 + 10 * i for i in range(18)]
    # the sample without a caption has no clip_text row (marked absent, not a bad row)
    assert read["b4"]["has_text"].tolist() == read["b1"]["has_text"].tolist() == [i != 4 for i in range(18)]
    assert not read["b4"]["text"][4].any()
    # batching changes nothing but speed: the same vectors as one file per forward pass
    np.testing.assert_allclose(read["b4"]["clip"], read["b1"]["clip"], atol=1e-5)
    np.testing.assert_allclose(read["b4"]["text"], read["b1"]["text"], atol=1e-5)


def test_build_shards_refuses_a_source_where_nothing_survives(tmp_path):
    from data_modules.build_shards import main

    (tmp_path / "wds").mkdir()
    with tarfile.open(tmp_path / "wds" / "00000.tar", "w") as tar:
        add_member(tar, "a.cls", b"1")
    with pytest.raises(SystemExit, match="0 events written; every sample was skipped.*no_content"):
        main(["webdataset", "--src", str(tmp_path / "wds"), "--out", str(tmp_path / "out"), "--no-progress",
              "--encoders", "minilm"])


def test_clap_style_audio_json_shards_build_with_a_tiny_clap(tmp_path, capsys):
    from tiny_encoders import tiny_clap_folder
    from wds_helpers import clap_style_shards

    good = clap_style_shards(tmp_path / "wds")
    skips = WebDatasetSkips()
    samples = list(iter_webdataset(WebDatasetConfig(urls=str(tmp_path / "wds"), caption_field="text",
                                                    topic_field="tag"), skips))
    assert [s.key for s in samples] == good and skips.counts == {"corrupt_sample": 1}
    assert samples[0].caption == "a dog barks" and samples[0].topic == "dog barks"  # the first of the captions
    assert samples[0].audio.dtype == np.float32 and samples[0].audio.shape == (24000,)  # 0.5 s at 48 kHz
    clap = json.dumps({"kind": "clap", "path": str(tiny_clap_folder(tmp_path / "clap", fusion=False)),
                       "precision": "fp32"})
    from data_modules.build_shards import main

    assert main(["webdataset", "--src", str(tmp_path / "wds"), "--out", str(tmp_path / "out"), "--batch-size", "4",
                 "--caption-field", "text", "--no-progress", "--encoders", clap]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events"] == 10 and report["skipped"]["by_reason"] == {"corrupt_sample": 1}
    assert report["spaces"] == {"clap": 16, "clap_text": 16}
    batches = list(StreamReplayDataset(ReplayConfig(root=str(tmp_path / "out"), batch_size=16,
                                                    reader=ReaderConfig(decode_media=False))))
    assert [k for b in batches for k in b["key"]] == good
    assert all(b["has"]["clap"].all() and b["has"]["clap_text"].all() for b in batches)
