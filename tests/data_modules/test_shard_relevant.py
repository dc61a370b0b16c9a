"""Labelled query events in shards: ``relevant`` lists written by the writer (block ``events.json``
field and per-event ``<key>.relevant.json``), replayed as ``batch["relevant"]`` (ids through the one
id function), and hostile labels (wrong JSON type, too many keys, wrong length) counted as skips."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
from tar_helpers import add_member, good_and_hostile_block, npy_bytes

from data_modules import (
    ReaderConfig,
    ReplayConfig,
    ShardSetWriter,
    StreamReplayDataset,
    write_blocks,
    write_manifest,
)
from data_modules.shard_format import scan_manifest
from luma_pl.stream import event_ids

RAW = ReaderConfig(decode_media=False)
D = 4


def _unit(rng, n):
    x = rng.standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _replay(folder, batch_size=4, reader=RAW):
    ds = StreamReplayDataset(ReplayConfig(root=str(folder), batch_size=batch_size, reader=reader))
    return list(ds)


def _relevant_by_key(batches):
    out = {}
    for b in batches:
        assert len(b["relevant"]) == len(b["key"])
        for key, rel in zip(b["key"], b["relevant"], strict=True):
            out[key] = None if rel is None else rel.tolist()
    return out


def test_block_and_event_labels_round_trip_as_ids(tmp_path):
    rng = np.random.default_rng(0)
    keys = [f"i{j}" for j in range(6)]
    relevant = [None, None, None, ["i0", "i2"], [], ["i5", "i1", "i5"]]
    write_blocks(tmp_path / "b", keys=keys, ts=np.arange(6), emb={"x": _unit(rng, 6)}, relevant=relevant,
                 block_events=4, events_per_shard=4)  # the labels are cut with the blocks
    got = _relevant_by_key(_replay(tmp_path / "b"))
    assert got == {k: None if r is None else event_ids(r).tolist() for k, r in zip(keys, relevant, strict=True)}
    with ShardSetWriter(tmp_path / "e", "e", 3) as w:
        for j in range(4):
            w.write_event(ts=j, key=f"e{j}", emb={"x": _unit(rng, 1)[0]},
                          relevant=[f"e{i}" for i in range(j)] if j % 2 else None)
    got = _relevant_by_key(_replay(tmp_path / "e"))
    assert got == {"e0": None, "e1": event_ids(["e0"]).tolist(), "e2": None,
                   "e3": event_ids(["e0", "e1", "e2"]).tolist()}


@pytest.mark.parametrize("bad, fix", [
    ("i0", "must be a list of event-key strings"),
    ([1, 2], "must be a non-empty event-key string"),
    ([""], "must be a non-empty event-key string"),
])
def test_writer_refuses_labels_that_are_not_key_lists(tmp_path, bad, fix):
    with ShardSetWriter(tmp_path, "w", 8) as w, pytest.raises(ValueError, match=fix):
        w.write_event(ts=0, key="q", emb={"x": np.ones(D, np.float32) / 2}, relevant=bad)
    with pytest.raises(ValueError, match="relevant must be a list of 2 entries"):
        write_blocks(tmp_path / "b", keys=["a", "b"], ts=np.arange(2), emb={"x": np.ones((2, D), np.float32) / 2},
                     relevant=[None])


@pytest.mark.parametrize("field", [
    {"a": 1},  # a dict, not a list
    [None, None, None],  # 3 entries for 4 events
    [None, None, None, "good0"],  # a bare string entry
    [None, None, None, [7]],  # an int key
    [None, None, None, [f"k{i}" for i in range(9)]],  # more keys than max_relevant=8
])
def test_hostile_block_labels_are_counted_skips(tmp_path, field):
    good_and_hostile_block(tmp_path / "h", "relevant", field)
    batches = _replay(tmp_path / "h", reader=ReaderConfig(decode_media=False, max_relevant=8))
    keys = [k for b in batches for k in b["key"]]
    assert keys == [f"good{i}" for i in range(4)]  # the good block replays, the bad one is skipped
    assert sum(b["events_skipped"] for b in batches) == 4
    reasons = {}
    for b in batches:
        for code, n in b["skip_reasons"].items():
            reasons[code] = reasons.get(code, 0) + n
    # one skip record for the sample, its other rows reconciled with the manifest: 4 events counted
    assert reasons["bad_json"] == 1 and set(reasons) <= {"bad_json", "missing_events"}


@pytest.mark.parametrize("payload", [b"{not json", b'{"a": 1}', b"[1]", b'"i0"'])
def test_hostile_event_label_file_is_a_counted_skip(tmp_path, payload):
    tmp_path.joinpath("s").mkdir()
    rng = np.random.default_rng(2)
    with tarfile.open(tmp_path / "s" / "s-000000.tar", "w") as tar:
        for key, rel in (("a", None), ("q", payload), ("b", b'["a"]')):
            add_member(tar, f"{key}.ts", b"0")
            add_member(tar, f"{key}.x.npy", npy_bytes(_unit(rng, 1)[0]))
            if rel is not None:
                add_member(tar, f"{key}.relevant.json", rel)
    write_manifest(scan_manifest(sorted(tmp_path.joinpath("s").glob("*.tar")), root=tmp_path / "s"), tmp_path / "s")
    batches = _replay(tmp_path / "s")
    got = _relevant_by_key(batches)
    assert got == {"a": None, "b": event_ids(["a"]).tolist()}
    assert sum(b["events_skipped"] for b in batches) == 1
    assert sum(b["skip_reasons"].get("bad_json", 0) for b in batches) == 1
