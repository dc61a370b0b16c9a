"""Standard retrieval test sets (Karpathy JSON, Clotho / AudioCaps CSV, JSONL) built as item events +
labelled caption queries, and scored in both directions by ``luma_pl.evaluation.retrieval_set``,
equal to the metrics computed on the same encoder's vectors directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from wds_helpers import _flac, _jpeg

from data_modules.build_shards import main as build
from data_modules.retrieval_sets import read_retrieval_set
from luma_pl.stream import event_ids


def _karpathy(tmp_path, n=6, missing=5):
    (tmp_path / "media" / "val2014").mkdir(parents=True)
    images = []
    for i in range(n):
        name = f"COCO_val2014_{i:012d}.jpg"
        if i != missing:
            (tmp_path / "media" / "val2014" / name).write_bytes(_jpeg(i))
        images.append({"filepath": "val2014", "filename": name, "split": "test", "imgid": i,
                       "sentences": [{"raw": f"a picture {i} variant {j}"} for j in range(5)]})
    images.append({"filepath": "val2014", "filename": "train_only.jpg", "split": "train", "sentences": [{"raw": "x"}]})
    (tmp_path / "karpathy.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    return tmp_path / "karpathy.json", tmp_path / "media"


def test_karpathy_set_builds_labelled_captions_and_scores_both_directions(tmp_path, capsys):
    from tiny_encoders import TINY_CLIP

    from luma_pl.encoders import OpenClipEncoder, build_encoder
    from luma_pl.evaluation.retrieval_set import main as score
    from luma_pl.metrics.cross_modal import retrieval_both_directions

    ann, media = _karpathy(tmp_path)
    ckpt = tmp_path / "clip.pt"
    torch.save(OpenClipEncoder(model_cfg=TINY_CLIP, precision="fp32").model.state_dict(), ckpt)
    cfg = {"kind": "clip", "model_cfg": TINY_CLIP, "path": str(ckpt), "precision": "fp32"}
    assert build(["retrieval", "--format", "karpathy", "--src", str(ann), "--media-root", str(media),
                  "--out", str(tmp_path / "shards"), "--batch-size", "2", "--encoders", json.dumps(cfg)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == 5 and report["captions"] == 25 and report["skipped"] == {"missing": 1, "undecodable": 0}
    assert score(["--root", str(tmp_path / "shards"), "--items", "clip", "--queries", "clip_text"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["items"] == 5 and got["queries"] == 25 and got["queries_without_item"] == 0
    # the same figures from the encoder's own vectors, computed here
    enc = build_encoder(cfg)
    items = [it for it in read_retrieval_set("karpathy", ann, media) if it.path.is_file()]
    from luma_pl.media import load_image

    img = enc.encode_image([load_image(it.path) for it in items])
    caps = enc.encode_text([c for it in items for c in it.captions])
    want = retrieval_both_directions(img, caps, np.repeat(np.arange(5), 5), names=("clip", "clip_text"))
    for key, v in want.items():
        assert got[key] == pytest.approx(v, abs=1e-6), key
    assert "clip_to_clip_text/recall@5" in got and "clip_text_to_clip/median_rank" in got


def test_caption_csvs_and_jsonl_group_captions_per_clip(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("x1.wav", "yt123_30.wav", "yt456.wav"):
        (tmp_path / "a" / name).write_bytes(_flac(1))
    (tmp_path / "clotho.csv").write_text("file_name,caption_1,caption_2,caption_3\nx1.wav,a dog,a dog barks,loud dog\n")
    (tmp_path / "audiocaps.csv").write_text("audiocap_id,youtube_id,start_time,caption\n1,yt123,30,rain falls\n"
                                            "2,yt456,0,a bird sings\n3,yt123,30,heavy rain\n")
    (tmp_path / "set.jsonl").write_text('{"file": "x1.wav", "captions": ["a", "b"]}\n\n')
    clotho = read_retrieval_set("clotho", tmp_path / "clotho.csv", tmp_path / "a")
    assert [(c.key, c.captions) for c in clotho] == [("x1", ["a dog", "a dog barks", "loud dog"])]
    caps = read_retrieval_set("audiocaps", tmp_path / "audiocaps.csv", tmp_path / "a")
    assert [(c.key, c.path.name, c.captions) for c in caps] == [("yt123", "yt123_30.wav", ["rain falls", "heavy rain"]),
                                                                ("yt456", "yt456.wav", ["a bird sings"])]
    assert read_retrieval_set("jsonl", tmp_path / "set.jsonl", tmp_path / "a")[0].captions == ["a", "b"]
    (tmp_path / "bad.csv").write_text("name,text\nx,y\n")
    with pytest.raises(ValueError, match="file_name,caption_1..caption_5; found \\['name', 'text'\\]"):
        read_retrieval_set("clotho", tmp_path / "bad.csv", tmp_path / "a")
    (tmp_path / "bad.json").write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "test", "sentences": 3}]}))
    with pytest.raises(ValueError, match="captions must be a non-empty list"):
        read_retrieval_set("karpathy", tmp_path / "bad.json", tmp_path / "a")
    with pytest.raises(SystemExit, match="not a Karpathy-split file"):
        (tmp_path / "list.json").write_text("[1, 2]")
        build(["retrieval", "--format", "karpathy", "--src", str(tmp_path / "list.json"), "--media-root",
               str(tmp_path), "--out", str(tmp_path / "o"), "--encoders", "minilm"])


def test_caption_events_are_labelled_queries_of_their_item(tmp_path, capsys):
    from data_modules import ReaderConfig, ReplayConfig, StreamReplayDataset

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.jpg").write_bytes(_jpeg(3))
    (tmp_path / "s.jsonl").write_text('{"file": "a.jpg", "captions": ["one", "two"]}\n')
    assert build(["retrieval", "--format", "jsonl", "--src", str(tmp_path / "s.jsonl"), "--media-root",
                  str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--encoders", "minilm"]) == 0
    capsys.readouterr()
    (b,) = [b for b in StreamReplayDataset(ReplayConfig(root=str(tmp_path / "o"), batch_size=8,
                                                        reader=ReaderConfig(decode_media=False))) if len(b["key"])]
    assert b["key"] == ["a", "a#c0", "a#c1"] and b["relevant"][0] is None
    assert [r.tolist() for r in b["relevant"][1:]] == [event_ids(["a"]).tolist()] * 2
    assert b["has"]["minilm_text"].tolist() == [False, True, True]
