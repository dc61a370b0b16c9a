"""``build_shards arrays``: embeddings users already have (.npz or a folder of .npy) as block shards,
with keys / ts / topics and spaces some rows lack; object arrays (pickle) refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_modules import ReaderConfig, ReplayConfig, StreamReplayDataset
from data_modules.build_shards import main


def _replay(root):
    return list(StreamReplayDataset(ReplayConfig(root=str(root), batch_size=64, reader=ReaderConfig(decode_media=False))))


def test_npz_and_npy_folder_become_block_shards(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 150
    clip = rng.standard_normal((n, 8)).astype(np.float32)
    clap = rng.standard_normal((n, 6)).astype(np.float32)
    has_clap = rng.random(n) < 0.7
    keys = np.array([f"item-{i}" for i in range(n)])
    np.savez(tmp_path / "emb.npz", clip=clip, clap=clap, has_clap=has_clap, keys=keys, ts=np.arange(n) * 5,
             topics=np.array([f"t{i % 3}" for i in range(n)]))
    assert main(["arrays", "--src", str(tmp_path / "emb.npz"), "--out", str(tmp_path / "a"), "--block-events", "64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events"] == n and report["spaces"] == {"clap": 6, "clip": 8}
    assert report["absent_rows"] == {"clap": int((~has_clap).sum())}
    batches = _replay(tmp_path / "a")
    assert [k for b in batches for k in b["key"]] == keys.tolist()
    assert [t for b in batches for t in b["ts"].tolist()] == (np.arange(n) * 5).tolist()
    assert sum(b["events_skipped"] for b in batches) == 0 and sum(b["skipped"] for b in batches) == 0
    got_has = np.concatenate([b["has"]["clap"].numpy() for b in batches])
    np.testing.assert_array_equal(got_has, has_clap)
    np.testing.assert_array_equal(np.concatenate([b["emb"]["clip"].numpy() for b in batches]), clip)
    # the same from a folder of .npy, defaults for keys and ts
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "clip.npy", clip)
    assert main(["arrays", "--src", str(tmp_path / "npy"), "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    batches = _replay(tmp_path / "b")
    assert [k for b in batches for k in b["key"]] == [str(i) for i in range(n)]


@pytest.mark.parametrize("arrays, message", [
    ({"keys": np.array(["a", None], dtype=object), "x": np.zeros((2, 3))}, "never object arrays"),
    ({"x": np.zeros((2, 3)), "y": np.zeros((3, 3))}, "different row counts"),
    ({"keys": np.array(["a", "a"]), "x": np.ones((2, 3))}, "keys repeat"),
    ({"ts": np.array([0.5, 1.0]), "x": np.ones((2, 3))}, "ts has dtype float64"),
    ({"keys": np.array(["a", "b"])}, "no \\(n, d\\) embedding array"),
    ({"x": np.ones((2, 3)), "has_x": np.array([1, 0])}, "has_x must be \\(2,\\) bool"),
])
def test_bad_arrays_name_the_problem(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(SystemExit, match=message):
        main(["arrays", "--src", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "o")])
