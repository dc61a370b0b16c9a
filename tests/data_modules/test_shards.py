"""Shard format, writer and safe reader on real tar files in tmp dirs."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tar_helpers import add_member, npy_bytes

from data_modules import (
    ReaderConfig,
    ReplayConfig,
    ShardSetWriter,
    StreamReplayDataset,
    iter_chunks,
    load_manifest,
    scan_manifest,
    write_blocks,
)
from data_modules.shard_format import list_shards
from luma_pl.threads import limit_cpu_threads

limit_cpu_threads()
RAW = ReaderConfig(decode_media=False)


def _read_all(folder: Path, cfg: ReaderConfig = RAW):
    m = load_manifest(folder)
    skips, chunks = [], []
    for info in m.shards:
        chunks += list(iter_chunks(str(folder / info.name), m.spaces, m.media, cfg, skips.append))
    return m, chunks, skips


def _write_events(folder: Path, n: int, per_shard: int, rng, name: str = "ev"):
    vecs = rng.standard_normal((n, 6)).astype(np.float32)
    with ShardSetWriter(folder, name, per_shard) as w:
        for i in range(n):
            emb = {"a": vecs[i]} if i % 3 else {"a": vecs[i], "b": vecs[i, :4]}
            w.write_event(ts=100 + i, key=f"e{i:04d}", topic=f"t{i // 4}", emb=emb,
                          media={"txt": f"caption {i} ü", "flac": bytes([i % 256]) * 7})
    return vecs


def test_event_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vecs = _write_events(tmp_path, 23, 5, rng)
    m, chunks, skips = _read_all(tmp_path)
    assert skips == []
    assert [s.events for s in m.shards] == [5, 5, 5, 5, 3]
    assert m.spaces == {"a": 6, "b": 4} and m.media == ["flac", "txt"]
    keys = [k for c in chunks for k in c.keys]
    assert keys == [f"e{i:04d}" for i in range(23)]
    ts = np.concatenate([c.ts for c in chunks])
    np.testing.assert_array_equal(ts, np.arange(100, 123))
    a = np.concatenate([c.emb["a"] for c in chunks])
    np.testing.assert_array_equal(a, vecs)
    has_b = np.concatenate([c.has["b"] for c in chunks])
    np.testing.assert_array_equal(has_b, [i % 3 == 0 for i in range(23)])
    b = np.concatenate([c.emb["b"] for c in chunks])
    np.testing.assert_array_equal(b[::3], vecs[::3, :4])
    assert not b[1].any()  # absent rows are zero
    txt = [t for c in chunks for t in c.media["txt"]]
    assert txt[5] == "caption 5 ü"
    assert [t for c in chunks for t in c.topics][9] == "t2"
    assert chunks[0].media["flac"][2] == bytes([2]) * 7
    # the manifest scanned from tar headers equals the one the writer recorded
    scanned = scan_manifest(list_shards(tmp_path), root=tmp_path)
    assert scanned.to_json() == m.to_json()


def test_block_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    n = 2500
    emb = {"x": rng.standard_normal((n, 16)).astype(np.float32), "y": rng.standard_normal((n, 3)).astype(np.float32)}
    keys = [f"k{i}" for i in range(n)]
    texts = {"txt": [f"item {i}" for i in range(n)], "query.txt": [f"q {i}" for i in range(n)]}
    m = write_blocks(tmp_path, keys=keys, ts=np.arange(n) * 2, emb=emb, topics=[str(i // 700) for i in range(n)],
                     texts=texts, name="blk", block_events=300, events_per_shard=1000)
    assert m.total_events == n and m.spaces == {"x": 16, "y": 3} and m.media == ["query.txt", "txt"]
    assert all(s.samples >= 1 for s in m.shards)
    _, chunks, skips = _read_all(tmp_path)
    assert skips == []
    assert [k for c in chunks for k in c.keys] == keys
    np.testing.assert_array_equal(np.concatenate([c.ts for c in chunks]), np.arange(n) * 2)
    for s in emb:
        np.testing.assert_array_equal(np.concatenate([c.emb[s] for c in chunks]), emb[s])
        assert all(c.has[s].all() for c in chunks)
    assert [t for c in chunks for t in c.media["query.txt"]] == texts["query.txt"]
    assert scan_manifest(list_shards(tmp_path), root=tmp_path).to_json() == m.to_json()


class _Marker:
    """Unpickling this creates a file: proof that a reader unpickled it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))




def test_pickle_entries_refused_never_unpickled(tmp_path):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Marker(marker))
    # the payload is live: unpickling a twin creates its marker
    twin = tmp_path / "twin"
    pickle.loads(pickle.dumps(_Marker(twin)))
    assert twin.exists()
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "bad-000000.tar", "w") as tar:
        add_member(tar, "s0.ts", b"1")
        add_member(tar, "s0.a.npy", npy_bytes(np.ones(4, np.float32)))
        for i, ext in enumerate(("pyd", "pickle", "pkl", "pth")):
            add_member(tar, f"p{i}.ts", b"2")
            add_member(tar, f"p{i}.{ext}", payload)
        add_member(tar, "s1.ts", b"3")
        add_member(tar, "s1.a.npy", npy_bytes(np.full(4, 2, np.float32)))
    m, chunks, skips = _read_all(shards)
    assert not marker.exists()
    assert [k for c in chunks for k in c.keys] == ["s0", "s1"]
    assert sorted(s.key for s in skips) == ["p0", "p1", "p2", "p3"]
    assert all("refused pickle-based entry" in s.reason for s in skips)
    # through the replay too: counted in batch["skipped"], still no marker
    batches = list(StreamReplayDataset(ReplayConfig(root=str(shards), batch_size=8, reader=RAW)))
    assert sum(b["skipped"] for b in batches) == 4 and not marker.exists()


def test_unsafe_names_and_absurd_sizes_rejected(tmp_path):
    with tarfile.open(tmp_path / "x-000000.tar", "w") as tar:
        add_member(tar, "ok.ts", b"1")
        add_member(tar, "../evil.ts", b"2")
        add_member(tar, "/abs.ts", b"3")
        add_member(tar, "big.ts", b"4")
        add_member(tar, "big.txt", b"y" * 5000)
        add_member(tar, "ok2.ts", b"5")
    skips = []
    chunks = list(iter_chunks(str(tmp_path / "x-000000.tar"), {}, ["txt"], ReaderConfig(max_member_bytes=1000,
                                                                                       decode_media=False),
                              skips.append))
    assert [k for c in chunks for k in c.keys] == ["ok", "ok2"]
    reasons = " | ".join(s.reason for s in skips)
    assert "unsafe member name '../evil.ts'" in reasons and "unsafe member name '/abs.ts'" in reasons
    assert "max_member_bytes=1000" in reasons and len(skips) == 3


def test_corrupt_entries_counted(tmp_path):
    with tarfile.open(tmp_path / "c-000000.tar", "w") as tar:
        add_member(tar, "a.ts", b"not-an-int")
        add_member(tar, "b.ts", b"2")
        add_member(tar, "b.s.npy", b"\x93NUMPY garbage")
        add_member(tar, "c.ts", b"3")
        add_member(tar, "c.s.npy", npy_bytes(np.ones(5, np.float32)))  # wrong d for the manifest
        add_member(tar, "d.ts", b"4")
        add_member(tar, "d.s.npy", npy_bytes(np.array([{"x": 1}], dtype=object)))  # object array needs pickle
        add_member(tar, "e.ts", b"5")
    skips = []
    chunks = list(iter_chunks(str(tmp_path / "c-000000.tar"), {"s": 4}, [], RAW, skips.append))
    assert [k for c in chunks for k in c.keys] == ["e"]
    assert [s.key for s in skips] == ["a", "b", "c", "d"]


def _replay_keys(root, **kw):
    ds = StreamReplayDataset(ReplayConfig(root=str(root), reader=RAW, **kw))
    batches = list(ds)
    assert len(batches) == ds.batches_per_pass()
    return batches


def test_truncated_shard_skipped_and_later_shards_replay(tmp_path):
    rng = np.random.default_rng(2)
    _write_events(tmp_path, 30, 10, rng)  # 3 shards of 10 events
    victim = tmp_path / "ev-000001.tar"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2 + 100])  # cut in the middle of a member
    batches = _replay_keys(tmp_path, batch_size=4)
    keys = [k for b in batches for k in b["key"]]
    assert keys[:10] == [f"e{i:04d}" for i in range(10)]
    assert keys[-10:] == [f"e{i:04d}" for i in range(20, 30)]  # the shard after still replays
    assert 10 < len(keys) < 30 and len(set(keys)) == len(keys)
    assert sum(b["skipped"] for b in batches) >= 1
    assert len(batches) == 8 and batches[-1]["padding"]  # planned ceil(30/4) batches, short worker pads


def test_truncated_on_member_boundary_and_garbage_counted(tmp_path):
    rng = np.random.default_rng(3)
    _write_events(tmp_path, 30, 10, rng)
    (tmp_path / "ev-000000.tar").write_bytes(os.urandom(20000))  # garbage bytes, same name
    s1 = tmp_path / "ev-000001.tar"
    with tarfile.open(s1) as tar:
        cut = tar.getmembers()[12].offset  # a header boundary: tarfile alone would stop silently
    s1.write_bytes(s1.read_bytes()[:cut])
    ds = StreamReplayDataset(ReplayConfig(root=str(tmp_path), reader=RAW, batch_size=5))
    batches = list(ds)
    keys = [k for b in batches for k in b["key"]]
    assert keys[-10:] == [f"e{i:04d}" for i in range(20, 30)]
    assert not any(k in keys for k in (f"e{i:04d}" for i in range(10)))
    assert len(batches) == 6 == ds.batches_per_pass()
    codes = [s.code for s in ds.skips]
    # garbage shard: changed size + unreadable; cut shard: changed size + no end marker; both then
    # reconciled per event with the manifest's count
    assert sorted(codes) == sorted(["stale_shard", "unreadable_shard", "missing_events",
                                    "stale_shard", "truncated_shard", "missing_events"])
    assert len(keys) + sum(b["events_skipped"] for b in batches) == 30


def test_manifest_scanned_when_absent(tmp_path):
    rng = np.random.default_rng(4)
    _write_events(tmp_path, 12, 5, rng)
    written = load_manifest(tmp_path).to_json()
    (tmp_path / "manifest.json").unlink()
    assert load_manifest(tmp_path).to_json() == written


def test_writer_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="events_per_shard=0"):
        ShardSetWriter(tmp_path, "x", 0)
    w = ShardSetWriter(tmp_path, "x", 4)
    with pytest.raises(ValueError, match="media ext='pyd'"):
        w.write_event(ts=1, media={"pyd": b"x"})
    w.write_event(ts=1, emb={"s": np.ones(3)})
    with pytest.raises(ValueError, match="d=3"):
        w.write_event(ts=2, emb={"s": np.ones(4)})
    w.close()


def test_media_decoded_explicitly_and_corrupt_media_counted(tmp_path):
    import soundfile as sf
    from PIL import Image

    img = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(img, format="PNG")
    wav = io.BytesIO()
    sf.write(wav, (np.sin(np.arange(4800) / 5) * 0.5).astype(np.float32), 48000, format="WAV")
    with ShardSetWriter(tmp_path, "m", 10) as w:
        w.write_event(ts=1, key="a", media={"png": img.getvalue(), "wav": wav.getvalue(), "txt": "red"})
        w.write_event(ts=2, key="b", media={"png": b"\x89PNG not really"})
        w.write_event(ts=3, key="c", media={"txt": "only text"})
    batches = list(StreamReplayDataset(ReplayConfig(root=str(tmp_path), batch_size=4)))
    (b,) = batches
    assert b["key"] == ["a", "c"] and b["skipped"] == 1
    assert b["media"]["png"][0].size == (8, 6) and b["media"]["png"][1] is None
    wave, sr = b["media"]["wav"][0]
    assert sr == 48000 and wave.dtype == np.float32 and wave.shape == (4800,)
    assert b["media"]["txt"] == ["red", "only text"]


def test_build_shards_folder_cli(tmp_path):
    from data_modules.build_shards import main

    src = tmp_path / "src"
    (src / "cats").mkdir(parents=True)
    (src / "dogs").mkdir()
    (src / "cats" / "a.txt").write_text("a cat sleeps on the sofa")
    (src / "dogs" / "b.txt").write_text("a dog runs in the park")
    (src / "dogs" / "c.txt").write_text("a dog barks")
    (src / "captions.jsonl").write_text('{"file": "dogs/c.txt", "ts": 99}\n')
    assert main(["folder", "--src", str(src), "--out", str(tmp_path / "out"), "--encoders", "wordllama",
                 "--events-per-shard", "2"]) == 0
    m = load_manifest(tmp_path / "out")
    assert m.spaces == {"wordllama_text": 256} and [s.events for s in m.shards] == [2, 1]
    _, chunks, skips = _read_all(tmp_path / "out")
    assert skips == []
    assert [t for c in chunks for t in c.topics] == ["cats", "dogs", "dogs"]
    assert np.concatenate([c.ts for c in chunks]).tolist() == [0, 1, 99]
    v = np.concatenate([c.emb["wordllama_text"] for c in chunks])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)


def test_build_shards_folder_media_with_tiny_clip_and_clap(tmp_path):
    """Images and audio with captions -> CLIP image / CLAP audio entries plus both text towers on
    the caption (the anchor pair); a corrupt image is skipped, named and counted, not fatal."""
    import json as _json

    import soundfile as sf
    from PIL import Image, ImageDraw
    from tiny_encoders import TINY_CLIP, tiny_clap_folder

    from data_modules.build_shards import main
    from luma_pl.encoders import ClapEncoder, OpenClipEncoder
    from luma_pl.media import load_audio, load_image

    src = tmp_path / "src"
    (src / "pics").mkdir(parents=True)
    (src / "sounds").mkdir()
    img = Image.new("RGB", (48, 40), (200, 30, 30))
    ImageDraw.Draw(img).ellipse((5, 5, 30, 30), fill=(255, 255, 0))
    img.save(src / "pics" / "sun.png")
    (src / "pics" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    t = np.arange(44100) / 44100
    sf.write(src / "sounds" / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    (src / "captions.jsonl").write_text(
        '{"file": "pics/sun.png", "caption": "a bird sings"}\n{"file": "sounds/tone.wav", "caption": "piano music"}\n')
    clap_dir = tiny_clap_folder(tmp_path / "clap", fusion=False)
    torch.manual_seed(0)
    clip = OpenClipEncoder(model_cfg=TINY_CLIP, precision="fp32")
    torch.save(clip.model.state_dict(), tmp_path / "clip.pt")  # the CLI loads these exact weights
    clip_cfg = _json.dumps({"kind": "clip", "model_cfg": TINY_CLIP, "path": str(tmp_path / "clip.pt"),
                            "precision": "fp32"})
    clap_cfg = _json.dumps({"kind": "clap", "path": str(clap_dir), "precision": "fp32"})
    out = tmp_path / "out"
    assert main(["folder", "--src", str(src), "--out", str(out), "--encoders", clip_cfg, clap_cfg]) == 0

    m = load_manifest(out)
    assert set(m.spaces) == {"clip", "clap", "clip_text", "clap_text"}
    report_events = sum(s.events for s in m.shards)
    assert report_events == 2  # sun.png and tone.wav; broken.jpg skipped
    _, chunks, skips = _read_all(out)
    assert skips == []
    keys = [k for c in chunks for k in c.keys]
    assert len(keys) == 2
    # recompute with the same tiny encoders and compare
    clap = ClapEncoder(clap_dir, precision="fp32")
    emb = {sp: np.concatenate([c.emb[sp] for c in chunks]) for sp in m.spaces}
    has = {sp: np.concatenate([c.has[sp] for c in chunks]) for sp in m.spaces}
    # event 0 = pics/sun.png (sorted order), event 1 = sounds/tone.wav
    assert has["clip"].tolist() == [True, False] and has["clap"].tolist() == [False, True]
    assert has["clip_text"].all() and has["clap_text"].all()
    np.testing.assert_allclose(emb["clip"][0], clip.encode_image([load_image(src / "pics" / "sun.png")])[0].numpy(),
                               atol=1e-5)
    wave = load_audio(src / "sounds" / "tone.wav", clap.sample_rate, window_s=clap.audio_window_s)
    np.testing.assert_allclose(emb["clap"][1], clap.encode_audio([wave])[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(emb["clap_text"][1], clap.encode_text(["piano music"])[0].numpy(), atol=1e-5)


def test_build_shards_folder_video_frames_and_pooled_clip(tmp_path):
    """A video becomes one clip event (mean-pooled CLIP frames) plus one event per sampled frame."""
    import json as _json
    from fractions import Fraction

    import av
    from tiny_encoders import TINY_CLIP

    from data_modules.build_shards import main
    from luma_pl.encoders import OpenClipEncoder
    from luma_pl.media.video import embed_video

    src = tmp_path / "src"
    src.mkdir()
    with av.open(str(src / "clip.mp4"), "w") as container:  # 2 s at 10 fps, colour changes each second
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (250, 20, 20) if i < 10 else (20, 20, 250),
                                                       np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    torch.manual_seed(0)
    clip = OpenClipEncoder(model_cfg=TINY_CLIP, precision="fp32")
    torch.save(clip.model.state_dict(), tmp_path / "clip.pt")
    cfg = _json.dumps({"kind": "clip", "model_cfg": TINY_CLIP, "path": str(tmp_path / "clip.pt"), "precision": "fp32"})
    out = tmp_path / "out"
    assert main(["folder", "--src", str(src), "--out", str(out), "--encoders", cfg, "--video-fps", "2"]) == 0

    _, chunks, skips = _read_all(out)
    assert skips == []
    keys = [k for c in chunks for k in c.keys]
    assert keys == ["000000000"] + [f"000000000_f{f:04d}" for f in range(4)]  # 2 s at 2 fps
    emb = {sp: np.concatenate([c.emb[sp] for c in chunks]) for sp in ("clip", "clip_frame")}
    per_frame, pooled = embed_video(clip, src / "clip.mp4", fps=2)
    np.testing.assert_allclose(emb["clip"][0], pooled.numpy(), atol=1e-5)
    np.testing.assert_allclose(emb["clip_frame"][1:], per_frame.numpy(), atol=1e-5)
    assert np.concatenate([c.ts for c in chunks]).tolist() == [0] * 5


def test_build_shards_folder_batches_files_per_forward_pass(tmp_path):
    """--batch-size N: N files per forward pass per tower, the same vectors as one file per pass."""
    from data_modules.build_shards import build_folder, make_parser

    src = tmp_path / "src"
    src.mkdir()
    for i, text in enumerate(["a cat sleeps", "a dog runs in the park", "rain on the window", "a violin solo",
                              "trains at night"]):
        (src / f"{i}.txt").write_text(text)
    out = {}
    for bs in (1, 2):
        args = make_parser().parse_args(["folder", "--src", str(src), "--out", str(tmp_path / f"out{bs}"),
                                         "--encoders", "wordllama", "minilm", "--batch-size", str(bs)])
        report = build_folder(args)
        assert report["events"] == 5 and report["batches"] == (5 if bs == 1 else 3)
        _, chunks, _ = _read_all(tmp_path / f"out{bs}")
        out[bs] = {sp: np.concatenate([c.emb[sp] for c in chunks]) for sp in ("wordllama_text", "minilm_text")}
    for sp in out[1]:
        np.testing.assert_allclose(out[2][sp], out[1][sp], atol=1e-5)
