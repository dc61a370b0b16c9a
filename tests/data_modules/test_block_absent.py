"""Blocks that hold events without some space (``has=`` in the writer, ``absent`` in
``events.json``): replayed with ``has`` False, not counted as bad rows; a hostile ``absent`` field
is a counted skip."""

from __future__ import annotations

import numpy as np
import pytest
from tar_helpers import good_and_hostile_block

from data_modules import ReaderConfig, ReplayConfig, StreamReplayDataset, write_blocks

RAW = ReaderConfig(decode_media=False)
D = 4


def _unit(rng, n):
    x = rng.standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _replay(folder, batch_size=4):
    return list(StreamReplayDataset(ReplayConfig(root=str(folder), batch_size=batch_size, reader=RAW)))


def test_block_rows_marked_absent_replay_without_that_space_and_are_not_bad_rows(tmp_path):
    """A block can hold events without some space (an image without a caption): ``has`` False
    where the writer said so, the rows zero, and no bad_embedding skip for them."""
    rng = np.random.default_rng(4)
    x, t = _unit(rng, 6), _unit(rng, 6)
    has_t = np.array([True, False, True, True, False, True])
    write_blocks(tmp_path / "b", keys=[f"k{i}" for i in range(6)], ts=np.arange(6), emb={"x": x, "t": t},
                 has={"t": has_t}, block_events=4)
    batches = _replay(tmp_path / "b", batch_size=6)
    assert sum(b["events_skipped"] for b in batches) == 0 and sum(b["skipped"] for b in batches) == 0
    b = batches[0]
    assert b["has"]["t"].numpy().tolist() == has_t.tolist() and b["has"]["x"].numpy().all()
    np.testing.assert_array_equal(b["emb"]["t"].numpy()[has_t], t[has_t])
    assert not b["emb"]["t"].numpy()[~has_t].any()
    with pytest.raises(ValueError, match="has\\['t'\\] must be a \\(2,\\) bool array"):
        write_blocks(tmp_path / "c", keys=["a", "b"], ts=np.arange(2), emb={"x": x[:2], "t": t[:2]},
                     has={"t": np.array([1, 0])})


@pytest.mark.parametrize("absent", [[1, 2], {"x": [9]}, {"x": "0"}, {"x": [True]}])
def test_hostile_absent_field_is_a_counted_skip(tmp_path, absent):
    folder = tmp_path / "h"
    good_and_hostile_block(folder, "absent", absent, seed=5)
    batches = _replay(folder)
    assert [k for b in batches for k in b["key"]] == [f"good{i}" for i in range(4)]
    assert sum(b["skip_reasons"].get("bad_json", 0) for b in batches) == 1
